-- Bot plugins (SQLite): a bot runs a herald:bot plugin of its org instead of calling a URL
-- (callback_url is then empty), with its own config for the plugin's `config` import.
ALTER TABLE bots ADD COLUMN plugin_id INTEGER;
ALTER TABLE bots ADD COLUMN config TEXT NOT NULL DEFAULT '{}';
