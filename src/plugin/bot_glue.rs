//! What every version of the bot world shares, written once: the host functions (the adapter
//! world's, with its limits), `call` and the conversation event built from the callback body. Each
//! version's bindings have their own (identical) types, so these are macros expanded inside
//! each version's module, beside its `bindgen!`.

/// The bot world's `host` functions, delegating to the adapter world's implementation.
macro_rules! bot_world_host {
    () => {
        /// The same functions, with the same limits, as the adapter world lends.
        impl herald::bot::host::Host for HostState {
            fn log(&mut self, level: herald::bot::host::Level, message: String) {
                use super::v0_1::herald::adapter::host::{Host, Level as AdapterLevel};
                let level = match level {
                    herald::bot::host::Level::Debug => AdapterLevel::Debug,
                    herald::bot::host::Level::Info => AdapterLevel::Info,
                    herald::bot::host::Level::Warn => AdapterLevel::Warn,
                    herald::bot::host::Level::Error => AdapterLevel::Error,
                };
                Host::log(self, level, message);
            }

            fn config(&mut self, key: String) -> Option<String> {
                super::v0_1::herald::adapter::host::Host::config(self, key)
            }

            fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
                super::v0_1::herald::adapter::host::Host::hmac_sha256(self, key, data)
            }

            fn now_ms(&mut self) -> i64 {
                super::v0_1::herald::adapter::host::Host::now_ms(self)
            }
        }

        impl herald::bot::types::Host for HostState {}
    };
}

/// `event(payload)`: the world's `conversation-event` from the callback body an HTTP bot gets.
/// `call` for one world version; `$guest` is its `Guest` variant.
macro_rules! bot_world_call {
    ($guest:ident) => {
        /// Runs `on-event` in a fresh instance, within the deadline and the memory cap.
        /// `payload` is the delivery's callback body, the JSON an HTTP bot would be sent.
        pub fn call(
            runtime: &Runtime,
            compiled: &Compiled,
            state: HostState,
            payload: &str,
        ) -> Result<Vec<BotReply>, PluginError> {
            let Guest::$guest(pre) = &compiled.guest else {
                return Err(wrong_world(compiled, WORLD));
            };
            let event = event(payload).map_err(|e| PluginError::Internal(anyhow::anyhow!(e)))?;
            let mut store = runtime.store(state);
            let result = pre
                .instantiate(&mut store)
                .and_then(|bot| bot.call_on_event(&mut store, &event));
            match result {
                Ok(messages) => replies(messages),
                Err(e) => Err(runtime.classify(e, store.data())),
            }
        }
    };
}

macro_rules! event_from_callback {
    () => {
        /// The event record, from the callback body (`outgoing::payload::build`).
        pub fn event(payload: &str) -> Result<types::ConversationEvent, String> {
            let body: serde_json::Value =
                serde_json::from_str(payload).map_err(|e| format!("the event is not JSON: {e}"))?;
            if !body.is_object() {
                return Err("the event must be a JSON object".into());
            }
            let event = text(&body, "event");
            if event.is_empty() {
                return Err("the event has no \"event\" name".into());
            }
            Ok(types::ConversationEvent {
                message: body.get("msgId").map(|_| chat_message(&body)),
                event,
                id: text(&body, "id"),
                conversation_id: text(&body, "conversationId"),
                conversation_kind: match body["conversationType"].as_str() {
                    Some("1") => types::ConversationKind::Single,
                    _ => types::ConversationKind::Group,
                },
                conversation_title: text(&body, "conversationTitle"),
                chatbot_user_id: text(&body, "chatbotUserId"),
                created_at_ms: body["createAt"].as_i64().unwrap_or_default(),
                user_ids: strings(&body["userIds"]),
                payload_json: payload.to_string(),
            })
        }

        fn chat_message(body: &serde_json::Value) -> types::ChatMessage {
            let msgtype = text(body, "msgtype");
            let object = &body[msgtype.as_str()];
            let readable = object["content"]
                .as_str()
                .or(object["text"].as_str())
                .unwrap_or_default();
            let staff_id = text(body, "senderStaffId");
            types::ChatMessage {
                id: text(body, "msgId"),
                text: readable.to_string(),
                sender: types::Sender {
                    id: text(body, "senderId"),
                    name: text(body, "senderNick"),
                    staff_id: (!staff_id.is_empty()).then_some(staff_id),
                    is_admin: body["isAdmin"].as_bool().unwrap_or_default(),
                },
                at_user_ids: body["atUsers"]
                    .as_array()
                    .map(|users| {
                        users
                            .iter()
                            .filter_map(|u| u["dingtalkId"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                thread_key: body["threadKey"].as_str().map(str::to_string),
                msgtype,
            }
        }

        fn text(body: &serde_json::Value, key: &str) -> String {
            body[key].as_str().unwrap_or_default().to_string()
        }

        fn strings(v: &serde_json::Value) -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        }
    };
}
