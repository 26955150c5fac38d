//! Typed ids. Inside herald an id is an `i64` (compact inbox keys); on the wire it is a string,
//! as the contract promises, so clients never depend on its numeric form.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};

/// Declares an id newtype that serializes as a decimal string and parses from one.
macro_rules! id_type {
    ($($name:ident),* $(,)?) => {$(
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse::<i64>().map($name)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{} must be a string of digits, got {:?}",
                        stringify!($name),
                        s
                    ))
                })
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some("^[0-9]+$"))
                    .examples([serde_json::json!("7316148731486208")])
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    )*};
}

id_type!(
    OrgId,
    UserId,
    ConversationId,
    MessageId,
    EventId,
    RobotId,
    BotId,
    DeliveryId,
    IncidentId,
    PolicyId,
    DingId,
    RotationId,
    PluginId
);

/// Generates time-ordered, process-unique 63-bit ids: milliseconds since 2024 in the high bits,
/// a random node number drawn at start and a sequence in the low bits. Messages get their id at
/// receive time, before the queue, so the sender can be answered at once.
pub struct IdGenerator {
    node: i64,
    last: AtomicI64,
}

const EPOCH_MS: i64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;

impl IdGenerator {
    pub fn new() -> Self {
        IdGenerator {
            node: rand::random::<i64>() & ((1 << NODE_BITS) - 1),
            last: AtomicI64::new(0),
        }
    }

    /// The next id; strictly greater than every id this generator returned before.
    pub fn next(&self) -> i64 {
        let now = crate::clock::now_ms() - EPOCH_MS;
        let candidate = (now << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS);
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = if candidate > prev {
                candidate
            } else {
                prev + 1
            };
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_as_strings() {
        let id = UserId(42);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"42\"");
        let back: UserId = serde_json::from_str("\"42\"").unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<UserId>("\"4x\"").is_err());
    }

    #[test]
    fn generator_is_strictly_increasing() {
        let g = IdGenerator::new();
        let mut last = 0;
        for _ in 0..100_000 {
            let id = g.next();
            assert!(id > last);
            last = id;
        }
    }
}
