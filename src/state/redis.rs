//! Runtime state in Redis, shared by every replica (feature `redis`).
//!
//! Each section is one Redis hash, `<prefix><section>`, whose fields are
//! the section's keys and whose values are the entries' JSON text. An
//! entry is replaced by a script that first checks it is still what the
//! writer read ([`StateStore::swap`]), so two replicas changing one entry
//! at once never lose a change: the second reads again and retries.
//! Each change is announced on the channel `<prefix>changes` ([`channel`]),
//! the section's name as the message, so that replicas listening read it
//! again at once rather than at their next refresh.
//!
//! Commands run on a blocking connection of its own, made on first use and
//! made again after an error, each bounded by a timeout (2 s by default):
//! the platform's handles write from the admin API's blocking tasks, and
//! read when a gateway is built and when they refresh.
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchyard::platform::subscription::{Policy, Subscriptions};
//! use switchyard::state::redis::RedisState;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisState::new(redis::Client::open("redis://127.0.0.1/")?)
//!     .prefix("shop:state:");
//! // Every replica that opens the same Redis and prefix sees one set of
//! // subscriptions (after its next `refresh`, for changes made elsewhere).
//! let subs = Subscriptions::with_state(Arc::new(store));
//! let _layer = subs.register("orders", Policy::Approval)?;
//! subs.refresh()?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::{StateError, StateStore};
use crate::redis_conn::{BlockingConnection, RedisTarget};

/// The default prefix of the hashes.
pub const DEFAULT_PREFIX: &str = "switchyard:state:";

/// Replaces a field if it still holds what the writer read, and
/// announces the change.
/// KEYS[1]: the hash. ARGV: field, "1" if it was present else "0", the
/// text read, the new text, the section, the channel (not a key: on a
/// Redis Cluster a second key would have to share the hash's slot).
/// Returns 1 if replaced, 0 if it had changed.
const SWAP: &str = r"
local now = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  if now ~= ARGV[3] then return 0 end
elseif now then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('PUBLISH', ARGV[6], ARGV[5])
return 1
";

/// The channel a store with `prefix` announces its changes on (the
/// changed section's name is the message): `<prefix>changes`.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}changes")
}

/// State kept in Redis (see the [module docs](self)).
pub struct RedisState {
    target: RedisTarget,
    prefix: String,
    timeout: Duration,
    conn: Mutex<Option<BlockingConnection>>,
    script: redis::Script,
}

impl fmt::Debug for RedisState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisState {
    /// State in the Redis `target` names (a `redis::Client`, or a
    /// [`RedisTarget`] for a cluster or Sentinel), under
    /// [`DEFAULT_PREFIX`]. Nothing is connected until first used.
    pub fn new(target: impl Into<RedisTarget>) -> Self {
        Self {
            target: target.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: Duration::from_secs(2),
            conn: Mutex::new(None),
            script: redis::Script::new(SWAP),
        }
    }

    /// The prefix of the hashes (fleets that share a Redis keep apart
    /// with different prefixes).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one command (or a connection) may take before it fails.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs `f` on the connection, made first if need be; a failed command
    /// drops the connection, so the next makes a new one.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut BlockingConnection) -> redis::RedisResult<T>,
    ) -> Result<T, StateError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if conn.is_none() {
            let target = self
                .target
                .clone()
                .timeout(self.timeout)
                .map_err(StateError::redis)?;
            *conn = Some(target.blocking().map_err(StateError::redis)?);
        }
        let Some(c) = conn.as_mut() else {
            unreachable!("made above");
        };
        match f(c) {
            Ok(v) => Ok(v),
            Err(e) => {
                *conn = None;
                Err(StateError::redis(e))
            }
        }
    }
}

impl StateStore for RedisState {
    fn location(&self) -> PathBuf {
        PathBuf::from(format!("redis:{}", self.prefix))
    }

    fn load(&self, section: &str, key: &str) -> Result<Option<String>, StateError> {
        let hash = format!("{}{section}", self.prefix);
        self.with(|c| redis::cmd("HGET").arg(&hash).arg(key).query(c))
    }

    fn swap(
        &self,
        section: &str,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StateError> {
        let hash = format!("{}{section}", self.prefix);
        let replaced: i64 = self.with(|c| {
            self.script
                .key(&hash)
                .arg(key)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or(""))
                .arg(value)
                .arg(section)
                .arg(channel(&self.prefix))
                .invoke(c)
        })?;
        Ok(replaced == 1)
    }
}
