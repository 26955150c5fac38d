//! Storage of DINGs with their confirmations, the SMS/voice outbox and its per-org provider,
//! and digest batches. A DING is written with its `ding` event task (and outbox rows) in one
//! transaction, so it is delivered exactly when it is stored. Both backends run the same
//! statements, expanded by `ding_store_impl!`; only the claims' row locking differs.

use async_trait::async_trait;
use sqlx::Row;

use super::{ids_json, MessageRecord, PgStore, Result, SqliteStore, StoreError, Task};
use crate::alerts::policy::Channel;
use crate::clock;
use crate::ids::{ConversationId, DingId, IncidentId, OrgId, RobotId, UserId};
use crate::model::{EventKind, Sender, SenderKind};

mod types;
pub use types::*;

#[async_trait]
pub trait DingStore: Send + Sync {
    /// Writes a DING and queues its `ding` event (and SMS/voice requests). Returns its id and
    /// the recipients that exist and are active.
    async fn create_ding(&self, ding: &NewDing) -> Result<(DingId, Vec<UserId>)>;
    async fn get_ding(&self, org: OrgId, id: DingId) -> Result<Ding>;
    /// Records the recipient's confirmation (once); NotFound if they are not a recipient.
    async fn confirm_ding(&self, org: OrgId, id: DingId, user: UserId) -> Result<Ding>;
    /// Everyone a DING about the incident reached.
    async fn dinged_users(&self, incident: IncidentId) -> Result<Vec<UserId>>;
    /// The incident's most recent DING.
    async fn latest_ding(&self, incident: IncidentId) -> Result<Option<Ding>>;
    /// Sends the DING again to those of the users who have not confirmed it: a new `ding`
    /// event (and SMS/voice requests) for each. Returns who it went to (none: all confirmed).
    async fn resend_ding(&self, resend: &Resend) -> Result<Vec<UserId>>;

    /// Adds a line to the robot's digest; the first line of a batch sets its due time.
    async fn add_digest_line(&self, item: &DigestLine) -> Result<()>;
    /// Leases robots whose digest is due.
    async fn claim_digests(&self, now_ms: i64, lease_ms: i64, limit: i64)
        -> Result<Vec<DueDigest>>;
    /// Removes the due digest and its lines and queues `message` built from them (by `build`),
    /// in one transaction; false if another process posted it first.
    async fn post_digest(
        &self,
        due: &DueDigest,
        build: &(dyn for<'a> Fn(&'a [String]) -> MessageRecord + Send + Sync),
    ) -> Result<bool>;

    async fn set_notifier(&self, org: OrgId, notifier: &Notifier) -> Result<()>;
    async fn get_notifier(&self, org: OrgId) -> Result<Option<Notifier>>;
    async fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>>;
    /// Marks an outbox row sent (no error; an earlier attempt's error is kept for the
    /// record), or schedules a retry, or gives it up (an error and no `retry_at`).
    async fn finish_notification(
        &self,
        id: i64,
        error: Option<&str>,
        retry_at_ms: Option<i64>,
    ) -> Result<()>;
}

/// Queue keys of DING tasks start here, far above any conversation id.
pub const DING_QUEUE_BASE: i64 = 1 << 60;

/// The queue key (pseudo-conversation) of a DING's event task: its own.
pub fn ding_queue(ding: DingId) -> ConversationId {
    ConversationId(DING_QUEUE_BASE + ding.0)
}

/// The `ding` event's details: what a client shows and where it confirms. `send` counts the
/// DING's sends (a re-send carries the same id with a higher count).
fn ding_details(id: i64, d: &NewDing, send: i64) -> serde_json::Value {
    serde_json::json!({"ding": {
        "id": id.to_string(),
        "text": d.text,
        "channel": d.channel.as_str(),
        "priority": "high",
        "send": send,
        "sender": {"id": d.sender.id, "kind": d.sender.kind.as_str(), "name": d.sender.name},
        "incident_id": d.incident.map(|i| i.to_string()),
        "confirm_path": format!("/api/v1/dings/{id}/confirm"),
    }})
}

/// Expands `DingStore` for a backend: its type, its database and the claims' lock clause.
macro_rules! ding_store_impl {
    ($store:ty, $db:ty, $lock:literal) => {
        impl $store {
            /// The DING row, its recipients, the `ding` event and any SMS/voice requests.
            pub(super) async fn insert_ding_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                d: &NewDing,
            ) -> Result<(DingId, Vec<UserId>)> {
                let sql = format!(
                    "SELECT id FROM users WHERE org_id = $1 AND active = $2 AND id IN ({}) ORDER BY id",
                    Self::ids_from("$3")
                );
                let found: Vec<i64> = sqlx::query_scalar(&sql)
                    .bind(d.org.0)
                    .bind(true)
                    .bind(ids_json(&d.recipients))
                    .fetch_all(&mut **tx)
                    .await?;
                let recipients: Vec<UserId> = found.into_iter().map(UserId).collect();
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO dings (org_id, sender_id, sender_name, text, channel, incident_id, created_at, last_sent_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
                )
                .bind(d.org.0)
                .bind(format!("{}:{}", d.sender.kind.as_str(), d.sender.id))
                .bind(&d.sender.name)
                .bind(&d.text)
                .bind(d.channel.as_str())
                .bind(d.incident.map(|i| i.0))
                .bind(d.now_ms)
                .fetch_one(&mut **tx)
                .await?;
                let sql = format!(
                    "INSERT INTO ding_recipients (ding_id, user_id) SELECT $1, id FROM ({}) AS ids",
                    Self::ids_from("$2")
                );
                sqlx::query(&sql)
                    .bind(id)
                    .bind(ids_json(&recipients))
                    .execute(&mut **tx)
                    .await?;
                Self::send_tx(tx, id, d, &recipients, 1).await?;
                Ok((DingId(id), recipients))
            }

            /// One send of a DING to `recipients` (who exist and are active): SMS/voice
            /// requests for its channel and the `ding` event task.
            async fn send_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                id: i64,
                d: &NewDing,
                recipients: &[UserId],
                send: i64,
            ) -> Result<()> {
                if d.channel.needs_provider() {
                    let sql = format!(
                        "INSERT INTO notification_outbox (org_id, ding_id, user_id, channel, attempts, run_at, locked_until, send_no) \
                         SELECT $1, $2, id, $3, 0, $4, 0, $6 FROM ({}) AS ids",
                        Self::ids_from("$5")
                    );
                    sqlx::query(&sql)
                        .bind(d.org.0)
                        .bind(id)
                        .bind(d.channel.as_str())
                        .bind(d.now_ms)
                        .bind(ids_json(recipients))
                        .bind(send)
                        .execute(&mut **tx)
                        .await?;
                }
                // DINGs are about people, not a conversation: the task's queue key is the DING's
                // own pseudo-conversation with no members, so the fanout writes the event to the
                // recipients only and no DING waits behind another (each recipient's stream
                // still orders them by pts).
                let event: i64 = sqlx::query_scalar(
                    "INSERT INTO conv_events (conversation_id, kind, details, created_at) \
                     VALUES (0, $1, $2, $3) RETURNING id",
                )
                .bind(EventKind::Ding.code() as i32)
                .bind(ding_details(id, d, send).to_string())
                .bind(d.now_ms)
                .fetch_one(&mut **tx)
                .await?;
                let task = Task::Announce {
                    conversation_id: ding_queue(DingId(id)),
                    kind: EventKind::Ding,
                    ref_id: event,
                    also_notify: recipients.to_vec(),
                };
                Self::enqueue_tx(tx, &task, d.now_ms).await.map(|_| ())
            }

            /// Sends the DING again to those of `r.users` who have not confirmed it.
            pub(super) async fn resend_ding_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                r: &Resend,
            ) -> Result<Vec<UserId>> {
                let sql = format!(
                    "SELECT user_id FROM ding_recipients WHERE ding_id = $1 AND confirmed_at IS NULL \
                     AND user_id IN ({}) ORDER BY user_id",
                    Self::ids_from("$2")
                );
                let open: Vec<i64> = sqlx::query_scalar(&sql)
                    .bind(r.ding.0)
                    .bind(ids_json(&r.users))
                    .fetch_all(&mut **tx)
                    .await?;
                let users: Vec<UserId> = open.into_iter().map(UserId).collect();
                if users.is_empty() {
                    return Ok(users);
                }
                let org: i64 = sqlx::query_scalar("SELECT org_id FROM dings WHERE id = $1")
                    .bind(r.ding.0)
                    .fetch_one(&mut **tx)
                    .await?;
                let ding = Self::ding_tx(&mut **tx, OrgId(org), r.ding).await?;
                let send: i64 = sqlx::query_scalar(
                    "UPDATE dings SET sends = sends + 1, last_sent_at = $2 WHERE id = $1 RETURNING sends",
                )
                .bind(r.ding.0)
                .bind(r.now_ms)
                .fetch_one(&mut **tx)
                .await?;
                let sql = format!(
                    "UPDATE ding_recipients SET sends = sends + 1 WHERE ding_id = $1 AND user_id IN ({})",
                    Self::ids_from("$2")
                );
                sqlx::query(&sql)
                    .bind(r.ding.0)
                    .bind(ids_json(&users))
                    .execute(&mut **tx)
                    .await?;
                let again = NewDing {
                    org: ding.org_id,
                    sender: ding.sender,
                    text: ding.text,
                    channel: r.channel,
                    incident: ding.incident_id,
                    recipients: users.clone(),
                    now_ms: r.now_ms,
                };
                Self::send_tx(tx, r.ding.0, &again, &users, send).await?;
                Ok(users)
            }

            async fn ding_tx(
                conn: &mut <$db as sqlx::Database>::Connection,
                org: OrgId,
                id: DingId,
            ) -> Result<Ding> {
                let row = sqlx::query(
                    "SELECT id, org_id, sender_id, sender_name, text, channel, incident_id, created_at, \
                     sends, last_sent_at FROM dings WHERE id = $1 AND org_id = $2",
                )
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or(StoreError::NotFound("ding"))?;
                let sender: String = row.try_get("sender_id")?;
                let (kind, sender_id) = sender.split_once(':').unwrap_or(("user", &sender));
                let channel: &str = row.try_get("channel")?;
                let recipients = sqlx::query(
                    "SELECT user_id, confirmed_at, sends FROM ding_recipients WHERE ding_id = $1 ORDER BY user_id",
                )
                .bind(id.0)
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| {
                    Ok(DingRecipient {
                        user: UserId(r.try_get("user_id")?),
                        confirmed_at_ms: r.try_get("confirmed_at")?,
                        sends: r.try_get("sends")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
                let deliveries = Self::provider_requests(conn, id).await?;
                let created_at_ms: i64 = row.try_get("created_at")?;
                Ok(Ding {
                    id,
                    org_id: org,
                    sender: Sender {
                        id: sender_id.to_string(),
                        kind: SenderKind::parse(kind),
                        name: row.try_get("sender_name")?,
                    },
                    text: row.try_get("text")?,
                    channel: Channel::parse(channel).unwrap_or(Channel::DingApp),
                    incident_id: row.try_get::<Option<i64>, _>("incident_id")?.map(IncidentId),
                    created_at_ms,
                    sends: row.try_get("sends")?,
                    last_sent_at_ms: row
                        .try_get::<Option<i64>, _>("last_sent_at")?
                        .unwrap_or(created_at_ms),
                    recipients,
                    deliveries,
                })
            }

            /// The DING's SMS/voice requests, oldest first.
            async fn provider_requests(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: DingId,
            ) -> Result<Vec<ProviderRequest>> {
                let rows = sqlx::query(
                    "SELECT user_id, send_no, channel, attempts, last_error, run_at, sent_at \
                     FROM notification_outbox WHERE ding_id = $1 ORDER BY id",
                )
                .bind(id.0)
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|r| {
                        let channel: &str = r.try_get("channel")?;
                        Ok(ProviderRequest {
                            user: UserId(r.try_get("user_id")?),
                            send: r.try_get("send_no")?,
                            channel: Channel::parse(channel).unwrap_or(Channel::DingSms),
                            attempts: r.try_get("attempts")?,
                            last_error: r.try_get("last_error")?,
                            run_at_ms: r.try_get("run_at")?,
                            sent_at_ms: r.try_get("sent_at")?,
                        })
                    })
                    .collect()
            }

        }

        #[async_trait]
        impl DingStore for $store {
            async fn create_ding(&self, ding: &NewDing) -> Result<(DingId, Vec<UserId>)> {
                let mut tx = self.writer().begin().await?;
                let created = Self::insert_ding_tx(&mut tx, ding).await?;
                tx.commit().await?;
                Ok(created)
            }

            async fn get_ding(&self, org: OrgId, id: DingId) -> Result<Ding> {
                let mut conn = self.reader().acquire().await?;
                Self::ding_tx(&mut conn, org, id).await
            }

            async fn confirm_ding(&self, org: OrgId, id: DingId, user: UserId) -> Result<Ding> {
                let mut tx = self.writer().begin().await?;
                let ding = Self::ding_tx(&mut tx, org, id).await?;
                if !ding.recipients.iter().any(|r| r.user == user) {
                    return Err(StoreError::NotFound("ding"));
                }
                sqlx::query(
                    "UPDATE ding_recipients SET confirmed_at = $1 WHERE ding_id = $2 AND user_id = $3 \
                     AND confirmed_at IS NULL",
                )
                .bind(clock::now_ms())
                .bind(id.0)
                .bind(user.0)
                .execute(&mut *tx)
                .await?;
                let ding = Self::ding_tx(&mut tx, org, id).await?;
                tx.commit().await?;
                Ok(ding)
            }

            async fn dinged_users(&self, incident: IncidentId) -> Result<Vec<UserId>> {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT DISTINCT r.user_id FROM dings d JOIN ding_recipients r ON r.ding_id = d.id \
                     WHERE d.incident_id = $1 ORDER BY r.user_id",
                )
                .bind(incident.0)
                .fetch_all(self.reader())
                .await?;
                Ok(ids.into_iter().map(UserId).collect())
            }

            async fn latest_ding(&self, incident: IncidentId) -> Result<Option<Ding>> {
                let row: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT id, org_id FROM dings WHERE incident_id = $1 ORDER BY id DESC LIMIT 1",
                )
                .bind(incident.0)
                .fetch_optional(self.reader())
                .await?;
                let Some((id, org)) = row else { return Ok(None) };
                let mut conn = self.reader().acquire().await?;
                Self::ding_tx(&mut conn, OrgId(org), DingId(id)).await.map(Some)
            }

            async fn resend_ding(&self, resend: &Resend) -> Result<Vec<UserId>> {
                let mut tx = self.writer().begin().await?;
                let users = Self::resend_ding_tx(&mut tx, resend).await?;
                tx.commit().await?;
                Ok(users)
            }

            async fn add_digest_line(&self, d: &DigestLine) -> Result<()> {
                let mut tx = self.writer().begin().await?;
                sqlx::query("INSERT INTO digest_items (robot_id, line, created_at) VALUES ($1, $2, $3)")
                    .bind(d.robot.0)
                    .bind(&d.line)
                    .bind(d.now_ms)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO digest_timers (robot_id, org_id, conversation_id, robot_name, due_at, locked_until) \
                     VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (robot_id) DO NOTHING",
                )
                .bind(d.robot.0)
                .bind(d.org.0)
                .bind(d.conversation.0)
                .bind(&d.robot_name)
                .bind(d.due_at_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn claim_digests(&self, now_ms: i64, lease_ms: i64, limit: i64) -> Result<Vec<DueDigest>> {
                let rows = sqlx::query(concat!(
                    "UPDATE digest_timers SET locked_until = $2 WHERE robot_id IN ( \
                       SELECT robot_id FROM digest_timers WHERE due_at <= $1 AND locked_until <= $1 \
                       ORDER BY due_at LIMIT $3 ", $lock, ") \
                     RETURNING robot_id, org_id, conversation_id, robot_name, due_at"
                ))
                .bind(now_ms)
                .bind(now_ms + lease_ms)
                .bind(limit)
                .fetch_all(self.writer())
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(DueDigest {
                            robot: RobotId(r.try_get("robot_id")?),
                            org: OrgId(r.try_get("org_id")?),
                            conversation: ConversationId(r.try_get("conversation_id")?),
                            robot_name: r.try_get("robot_name")?,
                            due_at_ms: r.try_get("due_at")?,
                        })
                    })
                    .collect()
            }

            async fn post_digest(
                &self,
                due: &DueDigest,
                build: &(dyn for<'a> Fn(&'a [String]) -> MessageRecord + Send + Sync),
            ) -> Result<bool> {
                let now = clock::now_ms();
                let mut tx = self.writer().begin().await?;
                let deleted = sqlx::query("DELETE FROM digest_timers WHERE robot_id = $1 AND due_at = $2")
                    .bind(due.robot.0)
                    .bind(due.due_at_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let lines: Vec<String> = sqlx::query_scalar(
                    "SELECT line FROM digest_items WHERE robot_id = $1 ORDER BY id",
                )
                .bind(due.robot.0)
                .fetch_all(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM digest_items WHERE robot_id = $1")
                    .bind(due.robot.0)
                    .execute(&mut *tx)
                    .await?;
                if !lines.is_empty() {
                    let message = build(&lines);
                    Self::insert_message_tx(&mut tx, &message, now).await?;
                    let task = Task::Post { message: Box::new(message) };
                    Self::enqueue_tx(&mut tx, &task, now).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn set_notifier(&self, org: OrgId, n: &Notifier) -> Result<()> {
                sqlx::query(
                    "INSERT INTO notification_providers (org_id, url, secret, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (org_id) DO UPDATE SET url = excluded.url, secret = excluded.secret, \
                     updated_at = excluded.updated_at",
                )
                .bind(org.0)
                .bind(&n.url)
                .bind(&n.secret)
                .bind(clock::now_ms())
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn get_notifier(&self, org: OrgId) -> Result<Option<Notifier>> {
                let row: Option<(String, String)> =
                    sqlx::query_as("SELECT url, secret FROM notification_providers WHERE org_id = $1")
                        .bind(org.0)
                        .fetch_optional(self.reader())
                        .await?;
                Ok(row.map(|(url, secret)| Notifier { url, secret }))
            }

            async fn claim_notifications(&self, now_ms: i64, lease_ms: i64, limit: i64) -> Result<Vec<OutboxItem>> {
                let claimed: Vec<i64> = sqlx::query_scalar(concat!(
                    "UPDATE notification_outbox SET locked_until = $2 WHERE id IN ( \
                       SELECT id FROM notification_outbox WHERE sent_at IS NULL AND run_at <= $1 \
                       AND locked_until <= $1 ORDER BY run_at LIMIT $3 ", $lock, ") RETURNING id"
                ))
                .bind(now_ms)
                .bind(now_ms + lease_ms)
                .bind(limit)
                .fetch_all(self.writer())
                .await?;
                if claimed.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT o.id, o.org_id, o.ding_id, o.user_id, o.channel, o.send_no, o.attempts, u.mobile, d.text, \
                     d.incident_id, p.url, p.secret FROM notification_outbox o \
                     JOIN dings d ON d.id = o.ding_id JOIN users u ON u.id = o.user_id \
                     LEFT JOIN notification_providers p ON p.org_id = o.org_id \
                     WHERE o.id IN ({}) ORDER BY o.id",
                    Self::ids_from("$1")
                );
                let raw: Vec<UserId> = claimed.into_iter().map(UserId).collect();
                let rows = sqlx::query(&sql).bind(ids_json(&raw)).fetch_all(self.writer()).await?;
                rows.iter()
                    .map(|r| {
                        let channel: &str = r.try_get("channel")?;
                        let url: Option<String> = r.try_get("url")?;
                        let secret: Option<String> = r.try_get("secret")?;
                        Ok(OutboxItem {
                            id: r.try_get("id")?,
                            org_id: OrgId(r.try_get("org_id")?),
                            ding_id: DingId(r.try_get("ding_id")?),
                            user_id: UserId(r.try_get("user_id")?),
                            channel: Channel::parse(channel).unwrap_or(Channel::DingSms),
                            send_no: r.try_get("send_no")?,
                            attempts: r.try_get("attempts")?,
                            mobile: r.try_get("mobile")?,
                            text: r.try_get("text")?,
                            incident_id: r.try_get::<Option<i64>, _>("incident_id")?.map(IncidentId),
                            notifier: url.zip(secret).map(|(url, secret)| Notifier { url, secret }),
                        })
                    })
                    .collect()
            }

            async fn finish_notification(&self, id: i64, error: Option<&str>, retry_at_ms: Option<i64>) -> Result<()> {
                let now = clock::now_ms();
                match (error, retry_at_ms) {
                    (None, _) => sqlx::query(
                        "UPDATE notification_outbox SET sent_at = $1, attempts = attempts + 1 WHERE id = $2",
                    )
                    .bind(now)
                    .bind(id),
                    (Some(e), Some(at)) => sqlx::query(
                        "UPDATE notification_outbox SET attempts = attempts + 1, run_at = $1, locked_until = 0, \
                         last_error = $3 WHERE id = $2",
                    )
                    .bind(at)
                    .bind(id)
                    .bind(e),
                    // Given up: kept, with its error, for the operator.
                    (Some(e), None) => sqlx::query(
                        "UPDATE notification_outbox SET attempts = attempts + 1, sent_at = -1, last_error = $2 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(e),
                }
                .execute(self.writer())
                .await?;
                Ok(())
            }
        }
    };
}

ding_store_impl!(SqliteStore, sqlx::Sqlite, "");
ding_store_impl!(PgStore, sqlx::Postgres, "FOR UPDATE SKIP LOCKED");
