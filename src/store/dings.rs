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

/// A DING to send.
#[derive(Debug, Clone)]
pub struct NewDing {
    pub org: OrgId,
    pub sender: Sender,
    pub text: String,
    pub channel: Channel,
    pub incident: Option<IncidentId>,
    pub recipients: Vec<UserId>,
    pub now_ms: i64,
}

/// A DING as stored, with who has confirmed it.
#[derive(Debug, Clone)]
pub struct Ding {
    pub id: DingId,
    pub org_id: OrgId,
    pub sender: Sender,
    pub text: String,
    pub channel: Channel,
    pub incident_id: Option<IncidentId>,
    pub created_at_ms: i64,
    /// Each recipient and when they confirmed.
    pub recipients: Vec<(UserId, Option<i64>)>,
}

/// An org's SMS/voice gateway.
#[derive(Debug, Clone)]
pub struct Notifier {
    pub url: String,
    pub secret: String,
}

/// One SMS or call to ask the provider for.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub org_id: OrgId,
    pub ding_id: DingId,
    pub user_id: UserId,
    pub channel: Channel,
    pub attempts: i64,
    pub mobile: Option<String>,
    pub text: String,
    pub incident_id: Option<IncidentId>,
    pub notifier: Option<Notifier>,
}

/// One line for a robot's digest.
#[derive(Debug, Clone)]
pub struct DigestLine {
    pub org: OrgId,
    pub robot: RobotId,
    pub robot_name: String,
    pub conversation: ConversationId,
    pub line: String,
    pub due_at_ms: i64,
    pub now_ms: i64,
}

/// A robot whose digest is due.
#[derive(Debug, Clone)]
pub struct DueDigest {
    pub robot: RobotId,
    pub org: OrgId,
    pub conversation: ConversationId,
    pub robot_name: String,
    pub due_at_ms: i64,
}

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
    /// Marks an outbox row sent (`retry_at` None and no error), or schedules a retry.
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

/// The `ding` event's details: what a client shows and where it confirms.
fn ding_details(id: i64, d: &NewDing) -> serde_json::Value {
    serde_json::json!({"ding": {
        "id": id.to_string(),
        "text": d.text,
        "channel": d.channel.as_str(),
        "priority": "high",
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
                    "INSERT INTO dings (org_id, sender_id, sender_name, text, channel, incident_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
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
                if d.channel.needs_provider() {
                    let sql = format!(
                        "INSERT INTO notification_outbox (org_id, ding_id, user_id, channel, attempts, run_at, locked_until) \
                         SELECT $1, $2, id, $3, 0, $4, 0 FROM ({}) AS ids",
                        Self::ids_from("$5")
                    );
                    sqlx::query(&sql)
                        .bind(d.org.0)
                        .bind(id)
                        .bind(d.channel.as_str())
                        .bind(d.now_ms)
                        .bind(ids_json(&recipients))
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
                .bind(ding_details(id, d).to_string())
                .bind(d.now_ms)
                .fetch_one(&mut **tx)
                .await?;
                let task = Task::Announce {
                    conversation_id: ding_queue(DingId(id)),
                    kind: EventKind::Ding,
                    ref_id: event,
                    also_notify: recipients.clone(),
                };
                Self::enqueue_tx(tx, &task, d.now_ms).await?;
                Ok((DingId(id), recipients))
            }

            async fn ding_tx(
                conn: &mut <$db as sqlx::Database>::Connection,
                org: OrgId,
                id: DingId,
            ) -> Result<Ding> {
                let row = sqlx::query(
                    "SELECT id, org_id, sender_id, sender_name, text, channel, incident_id, created_at \
                     FROM dings WHERE id = $1 AND org_id = $2",
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
                    "SELECT user_id, confirmed_at FROM ding_recipients WHERE ding_id = $1 ORDER BY user_id",
                )
                .bind(id.0)
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| Ok((UserId(r.try_get("user_id")?), r.try_get("confirmed_at")?)))
                .collect::<Result<Vec<_>>>()?;
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
                    created_at_ms: row.try_get("created_at")?,
                    recipients,
                })
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
                if !ding.recipients.iter().any(|(u, _)| *u == user) {
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
                    let task = Task::Post { message: Box::new(build(&lines)) };
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
                    "SELECT o.id, o.org_id, o.ding_id, o.user_id, o.channel, o.attempts, u.mobile, d.text, \
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
                        "UPDATE notification_outbox SET sent_at = $1, attempts = attempts + 1, last_error = NULL WHERE id = $2",
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
