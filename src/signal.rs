//! Who to tell when a setting changed: a list of listeners, held weakly,
//! told after each change (a weight set, a catalog swapped, a quota
//! changed). Changes are rare and listeners few; telling one must be
//! cheap and never block (the weight sync's wakes its task).

use std::sync::{Arc, Mutex, Weak};

/// Something told of each change.
pub(crate) trait Listener: Send + Sync {
    /// A change was made (called on the changer's thread, after the
    /// change is in force).
    fn changed(&self);
}

/// The listeners of one changeable thing.
#[derive(Default)]
pub(crate) struct Listeners(Mutex<Vec<Weak<dyn Listener>>>);

impl Listeners {
    /// Adds `listener`, unless it is there already; listeners dropped
    /// since are let go.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn add(&self, listener: &Arc<dyn Listener>) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|l| l.strong_count() > 0);
        let weak = Arc::downgrade(listener);
        if !list.iter().any(|l| Weak::ptr_eq(l, &weak)) {
            list.push(weak);
        }
    }

    /// Tells every listener still alive.
    pub(crate) fn fire(&self) {
        let list: Vec<Arc<dyn Listener>> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for l in list {
            l.changed();
        }
    }
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |l| l.len());
        f.debug_struct("Listeners").field("len", &n).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Count(AtomicU32);
    impl Listener for Count {
        fn changed(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn listeners_are_told_once_each_and_let_go_when_dropped() {
        let listeners = Listeners::default();
        let a = Arc::new(Count(AtomicU32::new(0)));
        let b = Arc::new(Count(AtomicU32::new(0)));
        let (dyn_a, dyn_b): (Arc<dyn Listener>, Arc<dyn Listener>) = (a.clone(), b.clone());
        listeners.add(&dyn_a);
        listeners.add(&dyn_a);
        listeners.add(&dyn_b);
        listeners.fire();
        assert_eq!(
            (a.0.load(Ordering::Relaxed), b.0.load(Ordering::Relaxed)),
            (1, 1)
        );
        drop((b, dyn_b));
        listeners.fire();
        assert_eq!(a.0.load(Ordering::Relaxed), 2);
        listeners.add(&dyn_a);
        assert_eq!(listeners.0.lock().unwrap().len(), 1);
    }
}
