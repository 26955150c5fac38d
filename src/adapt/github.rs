//! The github adapter (being built: see issue 3).

use super::{AdaptError, Adapted};
use crate::ingress::{RawWebhook, Verified};

pub fn adapt(_raw: &RawWebhook<Verified>) -> Result<Adapted, AdaptError> {
    Err(AdaptError::NoAdapter("github"))
}
