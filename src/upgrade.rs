//! Keeping things alive for as long as an upgraded connection is open.
//!
//! A protocol upgrade (a WebSocket) outlives its `101 Switching Protocols`
//! response: the connection stays open, tunnelled, long after every layer
//! has seen the response. [`UpgradeHold`] lets the layer that tunnels the
//! connection ([`proxy::Upstream`](crate::proxy) does) say so: it puts an
//! `UpgradeHold` in the 101's extensions and keeps a clone until the tunnel
//! closes, and a layer outside it [hands it](UpgradeHold::hold) whatever
//! must live as long as the connection. [`Split`](crate::split::Split)
//! hands it the request's in-flight count, so that `drained` waits for open
//! WebSockets too.
//!
//! ```
//! use std::sync::Arc;
//! use switchyard::upgrade::UpgradeHold;
//!
//! let hold = UpgradeHold::new();
//! let tunnel = hold.clone(); // what the tunnel keeps
//! let open = Arc::new(());
//! hold.hold(Arc::clone(&open));
//! drop(hold); // the response is gone...
//! assert_eq!(Arc::strong_count(&open), 2); // ...the value is still held
//! drop(tunnel); // the tunnel closed
//! assert_eq!(Arc::strong_count(&open), 1);
//! ```

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// Holds values until its last clone is dropped: see the [module
/// docs](self). Cheap to clone.
#[derive(Clone, Default)]
pub struct UpgradeHold {
    held: Arc<Mutex<Vec<Box<dyn Any + Send>>>>,
}

impl UpgradeHold {
    /// An empty hold.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `value` until every clone of this hold is dropped (it is
    /// dropped then).
    pub fn hold<T: Send + 'static>(&self, value: T) {
        self.held
            .lock()
            // Pushing cannot leave the list half-changed: ignore poisoning.
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(value));
    }
}

impl fmt::Debug for UpgradeHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.held.lock().map_or(0, |h| h.len());
        f.debug_struct("UpgradeHold").field("held", &held).finish()
    }
}
