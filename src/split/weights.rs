//! Weighted selection over targets: the snapshot of weights, the atomics the
//! hot path reads them from, and the
//! public [`Weights`] value.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SplitError;
use crate::seqlock::SeqCount;

// === impl Snapshot ===

/// An immutable set of weights, swapped whole on every change.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) weights: Box<[u32]>,
    /// `cumulative[i]` is the sum of `weights[..=i]`.
    cumulative: Box<[u64]>,

    /// The one target with weight, when only one has (100/0).
    only: Option<usize>,
}

impl Snapshot {
    pub(crate) fn new(weights: Box<[u32]>) -> Result<Self, SplitError> {
        let cumulative: Box<[u64]> = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        let total = cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return Err(if weights.is_empty() {
                SplitError::NoTargets
            } else {
                SplitError::AllWeightsZero
            });
        }
        let mut positive = weights.iter().enumerate().filter(|(_, w)| **w > 0);
        let only = match (positive.next(), positive.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        };
        Ok(Self {
            weights,
            cumulative,
            only,
        })
    }
}

// === impl View ===

/// Read access to a set of weights, from a [`Snapshot`] or from [`Live`].
pub(crate) trait View {
    fn len(&self) -> usize;
    fn weight(&self, i: usize) -> u32;
    /// The sum of the weights of targets `0..=i`.
    fn cumulative(&self, i: usize) -> u64;
    /// The one target with weight, when only one has (100/0).
    fn only(&self) -> Option<usize>;

    /// A pick proportional to weight from a uniformly random `point`.
    ///
    /// The space `[0, 2^64)` is cut into consecutive ranges, one per target
    /// in target order, each as wide as its share of the total weight, and
    /// the point's range wins; the comparison is exact integer arithmetic,
    /// so a zero-weight target owns an empty range and is never picked.
    #[inline]
    fn pick(&self, point: u64) -> usize {
        let last = self.len() - 1;
        let total = self.cumulative(last);
        // floor(point * total / 2^64) < total, so some cumulative exceeds it.
        let scaled = ((u128::from(point) * u128::from(total)) >> 64) as u64;
        (0..last)
            .find(|&i| scaled < self.cumulative(i))
            .unwrap_or(last)
    }

    /// A sticky pick for a key's stable hash: weighted rendezvous hashing.
    ///
    /// Each target `i` gets a score `w_i / -ln(u_i)`, where `u_i` in (0, 1)
    /// is derived from the key's hash and the target's own seed (a hash of
    /// its name), and the highest score wins. The winner is target `i` with
    /// probability `w_i / total`, and since a target's weight enters only
    /// its own score:
    ///
    /// * the same key keeps its target while the weights stay put;
    /// * raising one target's weight can only make keys move *onto* it
    ///   (its score rises, no other score changes), never between two other
    ///   targets and never off it — for any number of targets;
    /// * a zero-weight target scores zero and is never picked.
    ///
    /// (Cutting the hash space into consecutive ranges, as [`View::pick`]
    /// does, would not do: with three targets, raising the last one shifts
    /// every boundary and moves keys between the first two.)
    #[inline]
    fn pick_sticky(&self, hash: u64, seeds: &[u64]) -> usize {
        if let Some(only) = self.only() {
            return only;
        }
        let mut best = 0;
        let mut best_score = -1.0;
        for (i, &seed) in seeds.iter().enumerate().take(self.len()) {
            let w = self.weight(i);
            if w == 0 {
                continue;
            }
            let score = f64::from(w) / -unit(hash ^ seed).ln();
            if score > best_score {
                best = i;
                best_score = score;
            }
        }
        best
    }
}

impl View for Snapshot {
    fn len(&self) -> usize {
        self.weights.len()
    }

    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }

    fn cumulative(&self, i: usize) -> u64 {
        self.cumulative[i]
    }

    fn only(&self) -> Option<usize> {
        self.only
    }
}

// === impl Live ===

/// The weights the request path reads: the current [`Snapshot`] copied into
/// atomics behind a sequence lock.
///
/// Reading an `ArcSwap` costs more than the rest of a weighted pick; here a
/// reader loads a few words and checks that the sequence number did not
/// move (retrying in the rare case a change overlapped). The number of
/// targets never changes, so the arrays are allocated once. The sequence
/// number doubles as the generation of the weights (see `Shared::enter`).
pub(crate) struct Live {
    seq: SeqCount,
    weights: Box<[AtomicU32]>,
    cumulative: Box<[AtomicU64]>,
    /// `usize::MAX` when more than one target has weight.
    only: AtomicUsize,
}

impl Live {
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        let live = Live {
            seq: SeqCount::default(),
            weights: snapshot.weights.iter().map(|_| AtomicU32::new(0)).collect(),
            cumulative: snapshot.weights.iter().map(|_| AtomicU64::new(0)).collect(),
            only: AtomicUsize::new(usize::MAX),
        };
        live.publish(snapshot);
        live
    }

    /// Runs `read` on a consistent copy; returns its result and the
    /// sequence number it was read at.
    #[inline]
    pub(crate) fn read<R>(&self, read: impl Fn(&Self) -> R) -> (R, u64) {
        self.seq.read(|| read(self))
    }

    /// The current sequence number.
    #[inline]
    pub(crate) fn seq(&self) -> u64 {
        self.seq.current()
    }

    /// Publishes new weights of the same length. Writers are serialised
    /// by the caller.
    pub(crate) fn publish(&self, snapshot: &Snapshot) {
        self.seq.write(|| {
            for (i, w) in self.weights.iter().enumerate() {
                w.store(snapshot.weights[i], Ordering::Relaxed);
                self.cumulative[i].store(snapshot.cumulative[i], Ordering::Relaxed);
            }
            self.only
                .store(snapshot.only.unwrap_or(usize::MAX), Ordering::Relaxed);
        });
    }
}

impl View for Live {
    #[inline]
    fn len(&self) -> usize {
        self.weights.len()
    }

    #[inline]
    fn weight(&self, i: usize) -> u32 {
        self.weights[i].load(Ordering::Relaxed)
    }

    #[inline]
    fn cumulative(&self, i: usize) -> u64 {
        self.cumulative[i].load(Ordering::Relaxed)
    }

    #[inline]
    fn only(&self) -> Option<usize> {
        let only = self.only.load(Ordering::Relaxed);
        // A torn read may name an index out of range; the read is retried.
        (only < self.weights.len()).then_some(only)
    }
}

/// A well-mixed value in the open interval (0, 1) from 64 bits.
#[inline]
fn unit(x: u64) -> f64 {
    let x = crate::key::fmix64(x);
    // 53 random bits, centred in their ulp so that neither 0 nor 1 occurs.
    ((x >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

// === impl Weights ===

/// A set of weights by target name, in target order.
///
/// Weights are relative: `{blue: 90, green: 10}` and `{blue: 9, green: 1}`
/// split traffic the same way, and a zero weight means "no traffic" (100/0 is
/// plain blue/green). It serializes as a map, `{"blue": 90, "green": 10}`,
/// and deserializes from one, keeping the order of the document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Weights(Vec<(String, u32)>);

impl Weights {
    /// The weight of `target`, if it is in the set.
    pub fn get(&self, target: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| n == target).map(|&(_, w)| w)
    }

    /// The targets and their weights, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, u32)> {
        self.0.iter().map(|(n, w)| (n.as_str(), *w))
    }

    /// Number of targets in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set names no target.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each target's share of traffic, from 0.0 to 1.0, in order.
    pub fn shares(&self) -> impl ExactSizeIterator<Item = (&str, f64)> {
        let total: u64 = self.0.iter().map(|&(_, w)| u64::from(w)).sum();
        self.0.iter().map(move |(n, w)| {
            let share = if total == 0 {
                0.0
            } else {
                f64::from(*w) / total as f64
            };
            (n.as_str(), share)
        })
    }
}

impl<K: Into<String>> FromIterator<(K, u32)> for Weights {
    fn from_iter<I: IntoIterator<Item = (K, u32)>>(iter: I) -> Self {
        Weights(iter.into_iter().map(|(k, w)| (k.into(), w)).collect())
    }
}

impl<K: Into<String>, const N: usize> From<[(K, u32); N]> for Weights {
    fn from(pairs: [(K, u32); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl IntoIterator for Weights {
    type Item = (String, u32);
    type IntoIter = std::vec::IntoIter<(String, u32)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Weights {
    type Item = (&'a str, u32);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, u32)>,
        fn(&'a (String, u32)) -> (&'a str, u32),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(n, w)| (n.as_str(), *w))
    }
}

impl Serialize for Weights {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, weight) in &self.0 {
            map.serialize_entry(name, weight)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Weights {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WeightsVisitor;

        impl<'de> Visitor<'de> for WeightsVisitor {
            type Value = Weights;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of target names to non-negative integer weights")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Weights, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(2).min(64));
                while let Some((name, weight)) = map.next_entry::<String, u32>()? {
                    out.push((name, weight));
                }
                Ok(Weights(out))
            }
        }

        deserializer.deserialize_map(WeightsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(w: &[u32]) -> Snapshot {
        Snapshot::new(w.into()).unwrap()
    }

    #[test]
    fn pick_edges() {
        let s = snap(&[1, 1]);
        assert_eq!(s.pick(0), 0);
        assert_eq!(s.pick(u64::MAX / 2), 0);
        assert_eq!(s.pick(u64::MAX / 2 + 1), 1);
        assert_eq!(s.pick(u64::MAX), 1);

        let s = snap(&[0, 5, 0]);
        for p in [0, 1, u64::MAX / 3, u64::MAX] {
            assert_eq!(s.pick(p), 1);
        }
        let s = snap(&[u32::MAX, u32::MAX, u32::MAX]);
        assert_eq!(s.pick(u64::MAX), 2);
        assert_eq!(s.pick(0), 0);
    }

    #[test]
    fn sticky_pick_is_ramp_monotonic_for_three_targets() {
        // The case that defeats consecutive ranges: raising the last target.
        let seeds = [11, 22, 33];
        let before = snap(&[90, 10, 0]);
        let after = snap(&[90, 10, 5]);
        for key in 0..20_000u64 {
            let h = crate::key::fmix64(key);
            let (b, a) = (before.pick_sticky(h, &seeds), after.pick_sticky(h, &seeds));
            assert!(a == b || a == 2, "key {key} moved {b} -> {a}");
        }
    }

    #[test]
    fn sticky_pick_follows_weights() {
        let seeds = [1, 2, 3];
        let s = snap(&[60, 30, 10]);
        let mut counts = [0u32; 3];
        for key in 0..100_000u64 {
            counts[s.pick_sticky(crate::key::fmix64(key), &seeds)] += 1;
        }
        for (c, want) in counts.iter().zip([60_000.0, 30_000.0, 10_000.0]) {
            assert!((f64::from(*c) - want).abs() < 1_000.0, "{counts:?}");
        }
        assert_eq!(snap(&[0, 7, 0]).pick_sticky(12345, &seeds), 1);
    }

    #[test]
    fn rejects_empty_and_zero() {
        assert!(matches!(
            Snapshot::new(Box::new([])),
            Err(SplitError::NoTargets)
        ));
        assert!(matches!(
            Snapshot::new(Box::new([0, 0])),
            Err(SplitError::AllWeightsZero)
        ));
    }
}
