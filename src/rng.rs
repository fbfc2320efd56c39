//! The source of random picks shared by the routers (`split`, `model`).

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::rngs::{SmallRng, Xoshiro256PlusPlus};

type SharedRng = Arc<Mutex<Box<dyn FnMut() -> u64 + Send>>>;

/// Where a router's random `u64`s come from.
#[derive(Clone, Default)]
pub(crate) enum RngSource {
    /// A per-thread small generator seeded from the system.
    #[default]
    Thread,
    /// One generator for all clones, behind a mutex (tests, simulations).
    Shared(SharedRng),
}

thread_local! {
    static THREAD_RNG: RefCell<SmallRng> = RefCell::new(rand::make_rng());
}

impl RngSource {
    /// A seeded xoshiro256++ shared by all clones.
    pub(crate) fn seeded(seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        Self::from_fn(move || rand::Rng::next_u64(&mut rng))
    }

    /// A caller's generator shared by all clones.
    pub(crate) fn from_fn(next_u64: impl FnMut() -> u64 + Send + 'static) -> Self {
        Self::Shared(Arc::new(Mutex::new(Box::new(next_u64))))
    }

    #[inline]
    pub(crate) fn next_u64(&self) -> u64 {
        match self {
            RngSource::Thread => THREAD_RNG.with(|rng| rand::Rng::next_u64(&mut *rng.borrow_mut())),
            RngSource::Shared(rng) => {
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                rng()
            }
        }
    }
}

impl std::fmt::Debug for RngSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RngSource::Thread => "RngSource::Thread",
            RngSource::Shared(_) => "RngSource::Shared",
        })
    }
}
