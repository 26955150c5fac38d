//! Ingress for robots: `POST /robot/send` (DingTalk's custom robot) and
//! `POST /hooks/{kind}/{token}`. A request becomes a `RawWebhook<Unverified>` holding the raw
//! bytes and headers; `verify` checks it, `adapt` normalizes it, `render` turns each event into
//! a message, and `post` queues it as the robot. The receive path answers as soon as the
//! message is durably queued.

pub mod burst;
pub(crate) mod dingtalk;
pub(crate) mod hooks;
pub mod known;
mod plugin;
pub mod post;
pub mod stats;

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::IpAddr;

use axum::http::HeaderMap;
use axum::routing::post as post_route;
use axum::Router;
use bytes::Bytes;

use crate::robot::Robot;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/robot/send", post_route(dingtalk::send))
        .route("/hooks/{kind}/{token}", post_route(hooks::receive))
}

/// Marker: nothing about the request has been checked.
#[derive(Debug)]
pub struct Unverified;
/// Marker: the sender's address and signature passed `verify::verify`.
#[derive(Debug)]
pub struct Verified;

/// A webhook request as received, for the robot its URL names.
#[derive(Debug)]
pub struct RawWebhook<State> {
    pub robot: Robot,
    pub headers: HeaderMap,
    pub query: BTreeMap<String, String>,
    pub body: Bytes,
    pub peer: IpAddr,
    state: PhantomData<State>,
}

impl RawWebhook<Unverified> {
    pub fn new(
        robot: Robot,
        headers: HeaderMap,
        query: BTreeMap<String, String>,
        body: Bytes,
        peer: IpAddr,
    ) -> Self {
        RawWebhook {
            robot,
            headers,
            query,
            body,
            peer,
            state: PhantomData,
        }
    }

    /// Only `verify` calls this.
    pub(crate) fn into_verified(self) -> RawWebhook<Verified> {
        RawWebhook {
            robot: self.robot,
            headers: self.headers,
            query: self.query,
            body: self.body,
            peer: self.peer,
            state: PhantomData,
        }
    }
}

impl<S> RawWebhook<S> {
    /// A header's value as text (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The media type of the body, lower-cased, without parameters.
    pub fn content_type(&self) -> String {
        self.header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    }
}

/// Parses a query string into a map, percent-decoding once (DingTalk's `sign` arrives encoded).
pub fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .collect()
}
