//! Parsing a payload into a JSON tree without the members no adapter reads. A GitHub payload
//! spends about half its bytes on REST API URL templates (`forks_url`, `keys_url`, … some 60
//! in a push), and building a tree that holds them was the largest single cost of a GitHub
//! webhook. The text is still read in full, so a malformed body is refused exactly as before;
//! only the dropped members' values are skipped instead of copied.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `body` as one JSON value, leaving out every object member whose key `dropped`
/// names, at any depth.
pub fn from_slice_without(body: &[u8], dropped: fn(&str) -> bool) -> serde_json::Result<Value> {
    // Skipped values are not checked for UTF-8, so the whole body is, first (and then not again
    // string by string). A body that fails gets serde_json's own error, as it did before.
    let Ok(text) = std::str::from_utf8(body) else {
        return serde_json::from_slice(body);
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Pruned { dropped }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Builds a `Value` as serde_json's own does, skipping the dropped members' values.
#[derive(Clone, Copy)]
struct Pruned {
    dropped: fn(&str) -> bool,
}

impl<'de> DeserializeSeed<'de> for Pruned {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pruned {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key_seed(Key(self.dropped))? {
            match key {
                Some(key) => {
                    let value = map.next_value_seed(self)?;
                    members.insert(key, value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(members))
    }
}

/// An object key: `None` when it is dropped (decided before the key is copied).
struct Key(fn(&str) -> bool);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<String>, E> {
        Ok((!(self.0)(v)).then(|| v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Option<String>, E> {
        Ok((!(self.0)(&v)).then_some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_urls(key: &str) -> bool {
        key.ends_with("_url") && key != "html_url"
    }

    #[test]
    fn drops_the_named_members_at_every_depth_and_keeps_the_rest_as_serde_json_does() {
        let body = br#"{"a_url": "x", "html_url": "h", "n": [1, -2, 2.5, 18446744073709551615,
            null, true, "s\u00e9\n", {"keys_url": {"deep": [1]}, "k": {}}], "e": "\ud83d\ude00"}"#;
        let pruned = from_slice_without(body, api_urls).unwrap();
        let mut full: Value = serde_json::from_slice(body).unwrap();
        full.as_object_mut().unwrap().remove("a_url");
        full["n"][7].as_object_mut().unwrap().remove("keys_url");
        assert_eq!(pruned, full);
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for bad in [
            &b"{\"a_url\": [1,}"[..],
            b"{\"a\": 1} x",
            b"{\"a\": tru}",
            b"",
            b"{\"a_url\": \"unterminated}",
            b"{\"a_url\": \"\xff\"}",
            b"{\"a_url\": \"\\q\"}",
            b"{\"a_url\": \"\x01\"}",
        ] {
            assert!(serde_json::from_slice::<Value>(bad).is_err());
            assert!(from_slice_without(bad, api_urls).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(from_slice_without(deep.as_bytes(), api_urls).is_err());
    }
}
