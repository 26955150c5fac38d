//! The statements both backends run unchanged (`$n` placeholders work in SQLite too), expanded
//! into each backend's `Store` impl by `shared_store_impl!`. What differs per backend (claiming
//! tasks, the fanout statement, expanding a JSON id list) stays in `sqlite.rs` / `postgres.rs`
//! as inherent methods the macro calls.

/// Expands the shared part of `impl Store` for a backend type. The backend provides
/// `writer()`, `reader()`, `ids_from(param)`, `claim_tasks_impl`, `fan_out_chunk_impl`,
/// `watch_inbox_impl` and `enqueue_message_impl` (one transaction per message, or a group
/// commit).
macro_rules! shared_store_impl {
    ($store:ty, $db:ty) => {
        impl $store {
            fn user_from_row(row: &<$db as sqlx::Database>::Row) -> Result<User> {
                Ok(User {
                    id: UserId(row.try_get("id")?),
                    org_id: OrgId(row.try_get("org_id")?),
                    name: row.try_get("name")?,
                    mobile: row.try_get("mobile")?,
                    email: row.try_get("email")?,
                    staff_id: row.try_get("staff_id")?,
                    role: Role::parse(row.try_get::<&str, _>("role")?),
                    active: row.try_get("active")?,
                    created_at: clock::rfc3339(row.try_get("created_at")?),
                })
            }

            fn conversation_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Conversation> {
                Ok(Conversation {
                    id: ConversationId(row.try_get("id")?),
                    org_id: OrgId(row.try_get("org_id")?),
                    kind: ConversationKind::parse(row.try_get::<&str, _>("kind")?),
                    title: row.try_get("title")?,
                    owner_id: UserId(row.try_get("owner_id")?),
                    member_count: row.try_get("member_count")?,
                    created_at: clock::rfc3339(row.try_get("created_at")?),
                })
            }

            fn message_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Message> {
                let sender = Sender {
                    id: row.try_get("sender_id")?,
                    kind: SenderKind::parse(row.try_get::<&str, _>("sender_kind")?),
                    name: row.try_get("sender_name")?,
                };
                message_from_parts(
                    row.try_get("id")?,
                    row.try_get("org_id")?,
                    row.try_get("conversation_id")?,
                    sender,
                    row.try_get::<&str, _>("msgtype")?,
                    row.try_get::<&str, _>("content")?,
                    row.try_get::<&str, _>("at")?,
                    row.try_get("thread_key")?,
                    row.try_get("dedupe_key")?,
                    row.try_get("recalled")?,
                    row.try_get("created_at")?,
                )
            }

            fn event_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Event> {
                let code: i32 = row.try_get("kind")?;
                let kind = EventKind::from_code(code as i64)
                    .ok_or_else(|| anyhow::anyhow!("unknown event kind {code}"))?;
                let message = if kind.refers_to_message() {
                    let sender = Sender {
                        id: row.try_get("sender_id")?,
                        kind: SenderKind::parse(row.try_get::<&str, _>("sender_kind")?),
                        name: row.try_get("sender_name")?,
                    };
                    Some(message_from_parts(
                        row.try_get("ref_id")?,
                        row.try_get("m_org_id")?,
                        row.try_get("conversation_id")?,
                        sender,
                        row.try_get::<&str, _>("msgtype")?,
                        row.try_get::<&str, _>("content")?,
                        row.try_get::<&str, _>("at")?,
                        row.try_get("thread_key")?,
                        row.try_get("dedupe_key")?,
                        row.try_get("recalled")?,
                        row.try_get("m_created_at")?,
                    )?)
                } else {
                    None
                };
                let details = match row.try_get::<Option<&str>, _>("details")? {
                    Some(text) => Some(
                        serde_json::from_str(text)
                            .map_err(|e| anyhow::anyhow!("stored event details: {e}"))?,
                    ),
                    None => None,
                };
                Ok(Event {
                    pts: row.try_get("pts")?,
                    kind,
                    conversation_id: ConversationId(row.try_get("conversation_id")?),
                    created_at_ms: row.try_get("created_at")?,
                    message,
                    details,
                })
            }

            async fn insert_user(
                tx: &mut sqlx::Transaction<'_, $db>,
                org: OrgId,
                user: &NewUser,
                now: i64,
            ) -> Result<User> {
                let role = user.role.unwrap_or(Role::Member);
                let row = sqlx::query(
                    "INSERT INTO users (org_id, name, mobile, email, staff_id, role, active, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     RETURNING id, org_id, name, mobile, email, staff_id, role, active, created_at",
                )
                .bind(org.0)
                .bind(&user.name)
                .bind(&user.mobile)
                .bind(&user.email)
                .bind(&user.staff_id)
                .bind(role.as_str())
                .bind(true)
                .bind(now)
                .fetch_one(&mut **tx)
                .await?;
                let created = Self::user_from_row(&row)?;
                sqlx::query("INSERT INTO user_pts (user_id, pts) VALUES ($1, 0)")
                    .bind(created.id.0)
                    .execute(&mut **tx)
                    .await?;
                Ok(created)
            }

            /// Queues a task; returns its id (task ids order a conversation's events).
            pub(super) async fn enqueue_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                task: &Task,
                now: i64,
            ) -> Result<i64> {
                let payload = serde_json::to_string(task).map_err(anyhow::Error::from)?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO tasks (conversation_id, payload, attempts, run_at, locked_until, created_at) \
                     VALUES ($1, $2, 0, $3, 0, $3) RETURNING id",
                )
                .bind(task.conversation_id().0)
                .bind(payload)
                .bind(now)
                .fetch_one(&mut **tx)
                .await?;
                Ok(id)
            }

            /// Members added in this transaction hear only events queued from `task` on, never
            /// ones queued before they joined but written after.
            async fn stamp_joined_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                conversation: ConversationId,
                users: &[UserId],
                task: i64,
            ) -> Result<()> {
                let sql = format!(
                    "UPDATE members SET joined_task = $1 WHERE conversation_id = $2 AND user_id IN ({})",
                    Self::ids_from("$3")
                );
                sqlx::query(&sql)
                    .bind(task)
                    .bind(conversation.0)
                    .bind(ids_json(users))
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Stores a conversation event record and queues its announcement.
            async fn announce_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                conversation: ConversationId,
                kind: EventKind,
                details: serde_json::Value,
                also_notify: Vec<UserId>,
                now: i64,
            ) -> Result<i64> {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO conv_events (conversation_id, kind, details, created_at) \
                     VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(conversation.0)
                .bind(kind.code() as i32)
                .bind(details.to_string())
                .bind(now)
                .fetch_one(&mut **tx)
                .await?;
                let task = Task::Announce {
                    conversation_id: conversation,
                    kind,
                    ref_id: id,
                    also_notify,
                };
                Self::enqueue_tx(tx, &task, now).await
            }

            async fn refresh_member_count(
                tx: &mut sqlx::Transaction<'_, $db>,
                conversation: ConversationId,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE conversations SET member_count = \
                     (SELECT COUNT(*) FROM members WHERE conversation_id = $1) WHERE id = $1",
                )
                .bind(conversation.0)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Makes a fanout chunk idempotent: a single-chunk job deletes its task, a multi-chunk
            /// job marks its chunk done. False when an earlier run already did (roll back).
            /// Chunk 0 also queues the event for outgoing bots, so that happens exactly once.
            /// `None` when an earlier run already wrote this chunk; else whether outgoing-bot
            /// deliveries were queued with it.
            async fn claim_chunk_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                job: &ChunkJob<'_>,
            ) -> Result<Option<bool>> {
                let affected = if job.finishes_task() {
                    sqlx::query("DELETE FROM tasks WHERE id = $1")
                        .bind(job.task_id)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected()
                } else {
                    // A run marks the chunk done for each of its tasks (see `ChunkPlan`), all
                    // or none. A task that is gone was finished (by an earlier run, or as a
                    // follower in another task's run) and its marks removed: writing now would
                    // repeat it. The row lock keeps it from being finished while this commits.
                    let marked: Vec<i64> = sqlx::query_scalar(&format!(
                        "INSERT INTO fanout_progress (task_id, chunk) SELECT r.id, $2 FROM ({}) AS r \
                         WHERE EXISTS (SELECT 1 FROM tasks WHERE id = $3{}) \
                         ON CONFLICT (task_id, chunk) DO NOTHING RETURNING task_id",
                        Self::ids_from("$1"),
                        Self::FOR_SHARE
                    ))
                    .bind(serde_json::to_string(&job.run_task_ids()).map_err(anyhow::Error::from)?)
                    .bind(job.chunk as i64)
                    .bind(job.task_id)
                    .fetch_all(&mut **tx)
                    .await?;
                    u64::from(marked.contains(&job.task_id))
                };
                if affected != 1 {
                    return Ok(None);
                }
                // Outgoing bots: queue their deliveries in this same transaction.
                let mut queued = Self::enqueue_bot_events_tx(tx, job).await?;
                for i in 0..job.followers.len() {
                    queued |= Self::enqueue_bot_events_tx(tx, &job.as_follower(i)).await?;
                }
                Ok(Some(queued))
            }

            /// The new messages queued right behind `head` in its conversation that can ride in
            /// its fanout: the unbroken sequence of first-attempt `Post` tasks that are due.
            /// Anything else (a recall, a member change, a retry) ends the run, so every event
            /// keeps its place in the conversation's order. None while a task with a lower id
            /// is still queued: on PostgreSQL ids are taken at insert, not at commit, so the
            /// head may have been claimed before a lower id committed, and a sender's next
            /// message (queued after that one was answered) must not ride ahead of it. The
            /// check is in the same statement, so both see one snapshot.
            async fn follower_candidates(
                pool: &sqlx::Pool<$db>,
                conversation: ConversationId,
                head: i64,
                max_followers: i64,
            ) -> Result<Vec<i64>> {
                if max_followers <= 0 {
                    return Ok(Vec::new());
                }
                let rows = sqlx::query(
                    "SELECT id, payload, attempts, run_at FROM tasks WHERE conversation_id = $1 AND id > $2 \
                     AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.conversation_id = $1 AND o.id < $2) \
                     ORDER BY id LIMIT $3",
                )
                .bind(conversation.0)
                .bind(head)
                .bind(max_followers)
                .fetch_all(pool)
                .await?;
                let now = clock::now_ms();
                let mut followers = Vec::new();
                for row in &rows {
                    let payload: &str = row.try_get("payload")?;
                    let attempts: i64 = row.try_get("attempts")?;
                    let run_at: i64 = row.try_get("run_at")?;
                    let is_post = serde_json::from_str::<Task>(payload)
                        .is_ok_and(|task| matches!(task, Task::Post { .. }));
                    if !is_post || attempts > 0 || run_at > now {
                        break;
                    }
                    followers.push(row.try_get("id")?);
                }
                Ok(followers)
            }

            /// The queued tasks `ids`, in id order; all must still be queued.
            async fn queued_tasks(pool: &sqlx::Pool<$db>, ids: &[i64]) -> Result<Vec<QueuedTask>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = sqlx::query(&format!(
                    "SELECT id, payload, attempts, run_at FROM tasks WHERE id IN ({}) ORDER BY id",
                    Self::ids_from("$1")
                ))
                .bind(serde_json::to_string(ids).map_err(anyhow::Error::from)?)
                .fetch_all(pool)
                .await?;
                if rows.len() != ids.len() {
                    return Err(anyhow::anyhow!(
                        "{} of the run's {} followers are no longer queued",
                        ids.len() - rows.len(),
                        ids.len()
                    )
                    .into());
                }
                rows.iter()
                    .map(|row| {
                        let payload: &str = row.try_get("payload")?;
                        Ok(QueuedTask {
                            id: row.try_get("id")?,
                            task: task_from_payload(payload)?,
                            attempts: row.try_get("attempts")?,
                            run_at_ms: row.try_get("run_at")?,
                            members: 0,
                            planned: true,
                        })
                    })
                    .collect()
            }

            /// Inserts the message of a `Post` task unless an earlier run already did.
            pub(in crate::store) async fn insert_message_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                m: &MessageRecord,
                now: i64,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO messages (id, org_id, conversation_id, sender_id, sender_kind, sender_name, \
                     msgtype, content, at, thread_key, dedupe_key, recalled, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(m.id.0)
                .bind(m.org_id.0)
                .bind(m.conversation_id.0)
                .bind(&m.sender.id)
                .bind(m.sender.kind.as_str())
                .bind(&m.sender.name)
                .bind(&m.msgtype)
                .bind(m.content.to_string())
                .bind(serde_json::to_string(&m.at).map_err(anyhow::Error::from)?)
                .bind(&m.thread_key)
                .bind(&m.dedupe_key)
                .bind(false)
                .bind(m.created_at_ms)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// The active users of `org` among `ids`.
            async fn active_users_among(
                tx: &mut sqlx::Transaction<'_, $db>,
                org: OrgId,
                ids: &[UserId],
            ) -> Result<Vec<UserId>> {
                let sql = format!(
                    "SELECT id FROM users WHERE org_id = $1 AND active = $2 AND id IN ({})",
                    Self::ids_from("$3")
                );
                let found: Vec<i64> = sqlx::query_scalar(&sql)
                    .bind(org.0)
                    .bind(true)
                    .bind(ids_json(ids))
                    .fetch_all(&mut **tx)
                    .await?;
                Ok(found.into_iter().map(UserId).collect())
            }
        }

        #[async_trait]
        impl CoreStore for $store {
            async fn bootstrap(&self) -> Result<Bootstrap> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let fresh_key = base64::engine::general_purpose::STANDARD
                    .encode(rand::random::<[u8; 32]>());
                sqlx::query(
                    "INSERT INTO settings (key, value) VALUES ('jwt_signing_key', $1) \
                     ON CONFLICT (key) DO NOTHING",
                )
                .bind(fresh_key)
                .execute(&mut *tx)
                .await?;
                let key: String =
                    sqlx::query_scalar("SELECT value FROM settings WHERE key = 'jwt_signing_key'")
                        .fetch_one(&mut *tx)
                        .await?;
                let created: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO orgs (name, created_at) VALUES ('default', $1) \
                     ON CONFLICT (name) DO NOTHING RETURNING id",
                )
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(org) = created {
                    let admin = NewUser {
                        name: "admin".into(),
                        mobile: None,
                        email: None,
                        staff_id: None,
                        role: Some(Role::Admin),
                    };
                    Self::insert_user(&mut tx, OrgId(org), &admin, now).await?;
                }
                tx.commit().await?;
                let signing_key = base64::engine::general_purpose::STANDARD
                    .decode(key.as_bytes())
                    .map_err(|e| anyhow::anyhow!("stored signing key: {e}"))?;
                Ok(Bootstrap {
                    signing_key,
                    default_org: self.find_org("default").await?,
                })
            }

            async fn create_org(&self, name: &str) -> Result<(Org, User)> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO orgs (name, created_at) VALUES ($1, $2) \
                     ON CONFLICT (name) DO NOTHING RETURNING id",
                )
                .bind(name)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or_else(|| StoreError::Conflict(format!("org {name:?} exists")))?;
                let admin = NewUser {
                    name: "admin".into(),
                    mobile: None,
                    email: None,
                    staff_id: None,
                    role: Some(Role::Admin),
                };
                let user = Self::insert_user(&mut tx, OrgId(id), &admin, now).await?;
                tx.commit().await?;
                Ok((
                    Org {
                        id: OrgId(id),
                        name: name.to_string(),
                    },
                    user,
                ))
            }

            async fn find_org(&self, name_or_id: &str) -> Result<Org> {
                let id: i64 = name_or_id.parse().unwrap_or(-1);
                let row = sqlx::query("SELECT id, name FROM orgs WHERE name = $1 OR id = $2")
                    .bind(name_or_id)
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?
                    .ok_or(StoreError::NotFound("org"))?;
                Ok(Org {
                    id: OrgId(row.try_get("id")?),
                    name: row.try_get("name")?,
                })
            }

            async fn create_users(&self, org: OrgId, users: &[NewUser]) -> Result<Vec<User>> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let mut created = Vec::with_capacity(users.len());
                for user in users {
                    created.push(Self::insert_user(&mut tx, org, user, now).await?);
                }
                tx.commit().await?;
                Ok(created)
            }

            async fn get_user(&self, org: OrgId, id: UserId) -> Result<User> {
                let row = sqlx::query(
                    "SELECT id, org_id, name, mobile, email, staff_id, role, active, created_at \
                     FROM users WHERE id = $1 AND org_id = $2",
                )
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::NotFound("user"))?;
                Self::user_from_row(&row)
            }

            async fn find_user(&self, org: OrgId, name_or_id: &str) -> Result<User> {
                if let Ok(id) = name_or_id.parse::<UserId>() {
                    if let Ok(user) = self.get_user(org, id).await {
                        return Ok(user);
                    }
                }
                let rows = sqlx::query(
                    "SELECT id, org_id, name, mobile, email, staff_id, role, active, created_at \
                     FROM users WHERE org_id = $1 AND name = $2 ORDER BY id LIMIT 2",
                )
                .bind(org.0)
                .bind(name_or_id)
                .fetch_all(self.reader())
                .await?;
                match rows.as_slice() {
                    [one] => Self::user_from_row(one),
                    [] => Err(StoreError::NotFound("user")),
                    _ => Err(StoreError::Conflict(format!(
                        "several users are named {name_or_id:?}; use the id"
                    ))),
                }
            }

            async fn user_for_auth(&self, id: UserId) -> Result<Option<User>> {
                let row = sqlx::query(
                    "SELECT id, org_id, name, mobile, email, staff_id, role, active, created_at \
                     FROM users WHERE id = $1",
                )
                .bind(id.0)
                .fetch_optional(self.reader())
                .await?;
                row.as_ref().map(Self::user_from_row).transpose()
            }

            async fn list_users(
                &self,
                org: OrgId,
                after: Option<UserId>,
                limit: i64,
            ) -> Result<Vec<User>> {
                let rows = sqlx::query(
                    "SELECT id, org_id, name, mobile, email, staff_id, role, active, created_at \
                     FROM users WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(org.0)
                .bind(after.map_or(0, |u| u.0))
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::user_from_row).collect()
            }

            async fn deactivate_user(&self, org: OrgId, id: UserId) -> Result<Vec<ConversationId>> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let updated = sqlx::query("UPDATE users SET active = $1 WHERE id = $2 AND org_id = $3")
                    .bind(false)
                    .bind(id.0)
                    .bind(org.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 0 {
                    return Err(StoreError::NotFound("user"));
                }
                let left: Vec<i64> = sqlx::query_scalar(
                    "DELETE FROM members WHERE user_id = $1 RETURNING conversation_id",
                )
                .bind(id.0)
                .fetch_all(&mut *tx)
                .await?;
                for conv in &left {
                    let conv = ConversationId(*conv);
                    Self::refresh_member_count(&mut tx, conv).await?;
                    let details = serde_json::json!({
                        "user_ids": [id.to_string()], "reason": "deactivated"
                    });
                    Self::announce_tx(&mut tx, conv, EventKind::MemberLeft, details, vec![], now)
                        .await?;
                }
                tx.commit().await?;
                Ok(left.into_iter().map(ConversationId).collect())
            }

            async fn create_conversation(&self, new: &NewConversation) -> Result<Conversation> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let found = Self::active_users_among(&mut tx, new.org_id, &new.members).await?;
                if found.len() != new.members.len() {
                    let missing: Vec<String> = new
                        .members
                        .iter()
                        .filter(|u| !found.contains(u))
                        .take(10)
                        .map(|u| u.to_string())
                        .collect();
                    return Err(StoreError::Invalid(format!(
                        "unknown or inactive user ids: {}",
                        missing.join(", ")
                    )));
                }
                let single_key = new.single_key();
                let row = sqlx::query(
                    "INSERT INTO conversations (org_id, kind, title, owner_id, member_count, single_key, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     RETURNING id, org_id, kind, title, owner_id, member_count, created_at",
                )
                .bind(new.org_id.0)
                .bind(new.kind.as_str())
                .bind(&new.title)
                .bind(new.owner_id.0)
                .bind(new.members.len() as i64)
                .bind(single_key)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                let conversation = Self::conversation_from_row(&row)?;
                let sql = format!(
                    "INSERT INTO members (conversation_id, user_id, joined_at) SELECT $1, id, $2 FROM ({}) AS ids",
                    Self::ids_from("$3")
                );
                sqlx::query(&sql)
                    .bind(conversation.id.0)
                    .bind(now)
                    .bind(ids_json(&new.members))
                    .execute(&mut *tx)
                    .await?;
                if let Some(bot) = new.bot {
                    sqlx::query("INSERT INTO bot_installs (bot_id, conversation_id) VALUES ($1, $2)")
                        .bind(bot.0)
                        .bind(conversation.id.0)
                        .execute(&mut *tx)
                        .await?;
                }
                let details = serde_json::json!({
                    "conversation": {
                        "id": conversation.id.to_string(),
                        "kind": conversation.kind.as_str(),
                        "title": conversation.title,
                        "owner_id": conversation.owner_id.to_string(),
                        "member_count": conversation.member_count,
                    }
                });
                let task = Self::announce_tx(
                    &mut tx,
                    conversation.id,
                    EventKind::ConversationCreated,
                    details,
                    vec![],
                    now,
                )
                .await?;
                Self::stamp_joined_tx(&mut tx, conversation.id, &new.members, task).await?;
                tx.commit().await?;
                Ok(conversation)
            }

            async fn find_single(&self, org: OrgId, key: &str) -> Result<Option<Conversation>> {
                let row = sqlx::query(
                    "SELECT id, org_id, kind, title, owner_id, member_count, created_at \
                     FROM conversations WHERE org_id = $1 AND single_key = $2",
                )
                .bind(org.0)
                .bind(key)
                .fetch_optional(self.reader())
                .await?;
                row.as_ref().map(Self::conversation_from_row).transpose()
            }

            async fn get_conversation(&self, org: OrgId, id: ConversationId) -> Result<Conversation> {
                let row = sqlx::query(
                    "SELECT id, org_id, kind, title, owner_id, member_count, created_at \
                     FROM conversations WHERE id = $1 AND org_id = $2",
                )
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::NotFound("conversation"))?;
                Self::conversation_from_row(&row)
            }

            async fn list_conversations(
                &self,
                org: OrgId,
                member: Option<UserId>,
                after: Option<ConversationId>,
                limit: i64,
            ) -> Result<Vec<Conversation>> {
                let after = after.map_or(0, |c| c.0);
                let rows = match member {
                    Some(user) => {
                        sqlx::query(
                            "SELECT c.id, c.org_id, c.kind, c.title, c.owner_id, c.member_count, c.created_at \
                             FROM members m JOIN conversations c ON c.id = m.conversation_id \
                             WHERE m.user_id = $1 AND c.org_id = $2 AND c.id > $3 ORDER BY c.id LIMIT $4",
                        )
                        .bind(user.0)
                        .bind(org.0)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(self.reader())
                        .await?
                    }
                    None => {
                        sqlx::query(
                            "SELECT id, org_id, kind, title, owner_id, member_count, created_at \
                             FROM conversations WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                        )
                        .bind(org.0)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(self.reader())
                        .await?
                    }
                };
                rows.iter().map(Self::conversation_from_row).collect()
            }

            async fn list_members(
                &self,
                conversation: ConversationId,
                after: Option<UserId>,
                limit: i64,
            ) -> Result<Vec<UserId>> {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT user_id FROM members WHERE conversation_id = $1 AND user_id > $2 \
                     ORDER BY user_id LIMIT $3",
                )
                .bind(conversation.0)
                .bind(after.map_or(0, |u| u.0))
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                Ok(ids.into_iter().map(UserId).collect())
            }

            async fn is_member(&self, conversation: ConversationId, user: UserId) -> Result<bool> {
                let found: Option<i64> = sqlx::query_scalar(
                    "SELECT user_id FROM members WHERE conversation_id = $1 AND user_id = $2",
                )
                .bind(conversation.0)
                .bind(user.0)
                .fetch_optional(self.reader())
                .await?;
                Ok(found.is_some())
            }

            async fn add_members(
                &self,
                org: OrgId,
                conversation: ConversationId,
                users: &[UserId],
            ) -> Result<Vec<UserId>> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let found = Self::active_users_among(&mut tx, org, users).await?;
                if found.len() != users.len() {
                    let missing: Vec<String> = users
                        .iter()
                        .filter(|u| !found.contains(u))
                        .take(10)
                        .map(|u| u.to_string())
                        .collect();
                    return Err(StoreError::Invalid(format!(
                        "unknown or inactive user ids: {}",
                        missing.join(", ")
                    )));
                }
                let sql = format!(
                    "INSERT INTO members (conversation_id, user_id, joined_at) SELECT $1, id, $2 FROM ({}) AS ids \
                     WHERE true ON CONFLICT (conversation_id, user_id) DO NOTHING RETURNING user_id",
                    Self::ids_from("$3")
                );
                let added: Vec<i64> = sqlx::query_scalar(&sql)
                    .bind(conversation.0)
                    .bind(now)
                    .bind(ids_json(users))
                    .fetch_all(&mut *tx)
                    .await?;
                let added: Vec<UserId> = added.into_iter().map(UserId).collect();
                if !added.is_empty() {
                    Self::refresh_member_count(&mut tx, conversation).await?;
                    let details = serde_json::json!({
                        "user_ids": added.iter().map(|u| u.to_string()).collect::<Vec<_>>()
                    });
                    let task =
                        Self::announce_tx(&mut tx, conversation, EventKind::MemberJoined, details, vec![], now)
                            .await?;
                    Self::stamp_joined_tx(&mut tx, conversation, &added, task).await?;
                }
                tx.commit().await?;
                Ok(added)
            }

            async fn remove_member(
                &self,
                _org: OrgId,
                conversation: ConversationId,
                user: UserId,
                reason: &str,
            ) -> Result<bool> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let removed = sqlx::query(
                    "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2",
                )
                .bind(conversation.0)
                .bind(user.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if removed == 0 {
                    return Ok(false);
                }
                Self::refresh_member_count(&mut tx, conversation).await?;
                let details = serde_json::json!({"user_ids": [user.to_string()], "reason": reason});
                Self::announce_tx(&mut tx, conversation, EventKind::MemberLeft, details, vec![user], now)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn members_among(
                &self,
                conversation: ConversationId,
                ids: &[UserId],
                mobiles: &[String],
            ) -> Result<Vec<UserId>> {
                let mobiles = super::strings_json(mobiles);
                let sql = format!(
                    "SELECT m.user_id FROM members m JOIN users u ON u.id = m.user_id \
                     WHERE m.conversation_id = $1 AND (m.user_id IN ({}) OR u.mobile IN ({})) \
                     ORDER BY m.user_id",
                    Self::ids_from("$2"),
                    Self::strings_from("$3"),
                );
                let found: Vec<i64> = sqlx::query_scalar(&sql)
                    .bind(conversation.0)
                    .bind(ids_json(ids))
                    .bind(mobiles)
                    .fetch_all(self.reader())
                    .await?;
                Ok(found.into_iter().map(UserId).collect())
            }

            async fn enqueue_message(&self, message: &Message) -> Result<Enqueued> {
                self.enqueue_message_impl(message).await
            }

            async fn dedupe_lookup(&self, conversation: ConversationId, key: &str) -> Result<Option<MessageId>> {
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT message_id FROM dedupe WHERE conversation_id = $1 AND dedupe_key = $2",
                )
                .bind(conversation.0)
                .bind(key)
                .fetch_optional(self.reader())
                .await?;
                Ok(id.map(MessageId))
            }

            async fn get_message(&self, org: OrgId, id: MessageId) -> Result<Message> {
                let row = sqlx::query(
                    "SELECT id, org_id, conversation_id, sender_id, sender_kind, sender_name, msgtype, \
                     content, at, thread_key, dedupe_key, recalled, created_at \
                     FROM messages WHERE id = $1 AND org_id = $2",
                )
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::NotFound("message"))?;
                Self::message_from_row(&row)
            }

            async fn recall_message(&self, org: OrgId, id: MessageId) -> Result<bool> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let conversation: Option<i64> = sqlx::query_scalar(
                    "UPDATE messages SET recalled = $1, updated_at = $2 \
                     WHERE id = $3 AND org_id = $4 AND recalled = $5 RETURNING conversation_id",
                )
                .bind(true)
                .bind(now)
                .bind(id.0)
                .bind(org.0)
                .bind(false)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(conversation) = conversation else {
                    return Ok(false);
                };
                let task = Task::Announce {
                    conversation_id: ConversationId(conversation),
                    kind: EventKind::MessageRecalled,
                    ref_id: id.0,
                    also_notify: vec![],
                };
                Self::enqueue_tx(&mut tx, &task, now).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn update_message(&self, org: OrgId, id: MessageId, content: &Content) -> Result<()> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let conversation: Option<i64> = sqlx::query_scalar(
                    "UPDATE messages SET msgtype = $1, content = $2, updated_at = $3 \
                     WHERE id = $4 AND org_id = $5 AND recalled = $6 RETURNING conversation_id",
                )
                .bind(content.msgtype())
                .bind(content.body_string())
                .bind(now)
                .bind(id.0)
                .bind(org.0)
                .bind(false)
                .fetch_optional(&mut *tx)
                .await?;
                let conversation = conversation.ok_or(StoreError::NotFound("message"))?;
                let task = Task::Announce {
                    conversation_id: ConversationId(conversation),
                    kind: EventKind::MessageUpdated,
                    ref_id: id.0,
                    also_notify: vec![],
                };
                Self::enqueue_tx(&mut tx, &task, now).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn claim_tasks(&self, lane: u32, lanes: u32, limit: i64) -> Result<Vec<QueuedTask>> {
                self.claim_tasks_impl(lane, lanes, limit).await
            }

            async fn fan_out_chunk(&self, job: &ChunkJob<'_>) -> Result<ChunkOutcome> {
                self.fan_out_chunk_impl(job).await
            }

            async fn fan_out_batch(&self, jobs: &[ChunkJob<'_>]) -> Result<Vec<ChunkOutcome>> {
                self.fan_out_batch_impl(jobs).await
            }

            async fn watch_inbox(&self) -> Result<Option<tokio::sync::mpsc::Receiver<InboxChange>>> {
                self.watch_inbox_impl().await
            }

            async fn chunk_plan(
                &self,
                task_id: i64,
                conversation: ConversationId,
                per_chunk: i64,
                max_followers: i64,
            ) -> Result<ChunkPlan> {
                let bounds: Vec<i64> = sqlx::query_scalar(
                    // Each bound is `per_chunk` members past the previous one: one walk along
                    // the members index, no sort.
                    "WITH RECURSIVE b (user_id) AS ( \
                       SELECT (SELECT user_id FROM members WHERE conversation_id = $1 \
                               ORDER BY user_id LIMIT 1 OFFSET $2) \
                       UNION ALL \
                       SELECT (SELECT m.user_id FROM members m WHERE m.conversation_id = $1 AND m.user_id > b.user_id \
                               ORDER BY m.user_id LIMIT 1 OFFSET $3) \
                       FROM b WHERE b.user_id IS NOT NULL) \
                     SELECT user_id FROM b WHERE user_id IS NOT NULL ORDER BY user_id",
                )
                .bind(conversation.0)
                .bind(per_chunk.max(1))
                .bind(per_chunk.max(1) - 1)
                .fetch_all(self.writer())
                .await?;
                // A plan stored by an earlier run (or another process) wins over this one. A
                // group that fits one chunk stores none: its single transaction ends the task.
                let kept: Option<String> = if bounds.is_empty() {
                    sqlx::query_scalar("SELECT bounds FROM fanout_plans WHERE task_id = $1")
                        .bind(task_id)
                        .fetch_optional(self.writer())
                        .await?
                } else {
                    let followers = Self::follower_candidates(self.writer(), conversation, task_id, max_followers).await?;
                    let ours = StoredPlan { bounds, followers };
                    sqlx::query_scalar(
                        "INSERT INTO fanout_plans (task_id, bounds) VALUES ($1, $2) \
                         ON CONFLICT (task_id) DO UPDATE SET bounds = fanout_plans.bounds RETURNING bounds",
                    )
                    .bind(task_id)
                    .bind(ours.to_json())
                    .fetch_optional(self.writer())
                    .await?
                };
                let Some(kept) = kept else {
                    return Ok(ChunkPlan::default());
                };
                let kept = StoredPlan::parse(&kept)?;
                if !kept.followers.is_empty() {
                    // Each follower keeps the same split under its own id (idempotent, so a
                    // run that stopped between the two writes completes it).
                    let single = StoredPlan { bounds: kept.bounds.clone(), followers: Vec::new() };
                    sqlx::query(&format!(
                        "INSERT INTO fanout_plans (task_id, bounds) SELECT r.id, $2 FROM ({}) AS r WHERE true \
                         ON CONFLICT (task_id) DO NOTHING",
                        Self::ids_from("$1")
                    ))
                    .bind(serde_json::to_string(&kept.followers).map_err(anyhow::Error::from)?)
                    .bind(single.to_json())
                    .execute(self.writer())
                    .await?;
                }
                let followers = Self::queued_tasks(self.writer(), &kept.followers).await?;
                Ok(ChunkPlan { bounds: kept.bounds, followers })
            }

            async fn complete_task(&self, task_ids: &[i64]) -> Result<()> {
                let ids = serde_json::to_string(task_ids).map_err(anyhow::Error::from)?;
                let mut tx = self.writer().begin().await?;
                for table in ["fanout_plans", "fanout_progress"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE task_id IN ({})", Self::ids_from("$1")))
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(&format!("DELETE FROM tasks WHERE id IN ({})", Self::ids_from("$1")))
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn retry_task(&self, task_id: i64, run_at_ms: i64, error: &str) -> Result<()> {
                let mut tx = self.writer().begin().await?;
                let attempts: Option<i64> = sqlx::query_scalar(
                    "UPDATE tasks SET attempts = attempts + 1, run_at = $1, locked_until = 0, last_error = $2 \
                     WHERE id = $3 RETURNING attempts",
                )
                .bind(run_at_ms)
                .bind(error)
                .bind(task_id)
                .fetch_optional(&mut *tx)
                .await?;
                if attempts.unwrap_or(0) >= crate::queue::MAX_ATTEMPTS {
                    sqlx::query(
                        "INSERT INTO dead_tasks (id, conversation_id, payload, attempts, last_error, created_at, failed_at) \
                         SELECT id, conversation_id, payload, attempts, last_error, created_at, $1 FROM tasks WHERE id = $2",
                    )
                    .bind(clock::now_ms())
                    .bind(task_id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM tasks WHERE id = $1")
                        .bind(task_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn pending_tasks(&self) -> Result<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
                    .fetch_one(self.reader())
                    .await?)
            }

            async fn member_count(&self, conversation: ConversationId) -> Result<i64> {
                let count: Option<i64> =
                    sqlx::query_scalar("SELECT member_count FROM conversations WHERE id = $1")
                        .bind(conversation.0)
                        .fetch_optional(self.reader())
                        .await?;
                Ok(count.unwrap_or(0))
            }

            async fn read_events(&self, user: UserId, since: i64, limit: i64) -> Result<Vec<Event>> {
                let rows = sqlx::query(
                    "SELECT i.pts, i.kind, i.conversation_id, i.ref_id, i.created_at, \
                     m.org_id AS m_org_id, m.sender_id, m.sender_kind, m.sender_name, m.msgtype, m.content, \
                     m.at, m.thread_key, m.dedupe_key, m.recalled, m.created_at AS m_created_at, \
                     e.details \
                     FROM inbox i \
                     LEFT JOIN messages m ON i.kind IN (1, 2, 3) AND m.id = i.ref_id \
                     LEFT JOIN conv_events e ON i.kind IN (4, 5, 6, 7) AND e.id = i.ref_id \
                     WHERE i.user_id = $1 AND i.pts > $2 ORDER BY i.pts LIMIT $3",
                )
                .bind(user.0)
                .bind(since)
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::event_from_row).collect()
            }

            async fn head_pts(&self, user: UserId) -> Result<i64> {
                let pts: Option<i64> = sqlx::query_scalar("SELECT pts FROM user_pts WHERE user_id = $1")
                    .bind(user.0)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(pts.unwrap_or(0))
            }
        }
    };
}

pub(crate) use shared_store_impl;
