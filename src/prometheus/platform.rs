//! Collectors of the platform: APIs' lifecycle stages and subscriptions.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::{LabelSet, counter, gauge, row};
use crate::platform::lifecycle::LifecycleHandle;
use crate::platform::subscription::Subscriptions;

// === LifecycleCollector ===

/// The stage an API version is in: `switchyard_api_stage` is 1 with the
/// labels `api`, `version` and `stage` (`draft`, `published`,
/// `deprecated`, `retired`) of its current stage.
#[derive(Clone, Debug, Default)]
pub struct LifecycleCollector {
    apis: Vec<(LabelSet, LifecycleHandle)>,
}

impl LifecycleCollector {
    /// The stage of the API version behind `handle`, labelled `labels`.
    pub fn new(handle: LifecycleHandle, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(handle, labels)
    }

    /// Adds another API version to the same family.
    pub fn with(mut self, handle: LifecycleHandle, labels: impl Into<LabelSet>) -> Self {
        self.apis.push((labels.into(), handle));
        self
    }
}

impl crate::prometheus::EncodeInto for LifecycleCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            enc,
            "switchyard_api_stage",
            "1 for the lifecycle stage a route's API is in.",
            self.apis.iter().map(|(l, h)| {
                let api = h.api();
                let labels = [
                    ("api", api.name().into()),
                    ("version", api.version().into()),
                    ("stage", h.stage().as_str().into()),
                ];
                (row(l, labels), 1)
            }),
        )
    }
}

crate::prometheus::collector!(LifecycleCollector);

// === SubscriptionCollector ===

/// Calls refused with 403 `subscription_required`, by `api`, for every
/// API registered in a [`Subscriptions`].
#[derive(Clone, Debug, Default)]
pub struct SubscriptionCollector {
    registries: Vec<(LabelSet, Subscriptions)>,
}

impl SubscriptionCollector {
    /// The refusals of every API in `subscriptions` (a clone shares
    /// them), labelled `labels`.
    pub fn new(subscriptions: Subscriptions, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(subscriptions, labels)
    }

    /// Adds another registry to the same family.
    pub fn with(mut self, subscriptions: Subscriptions, labels: impl Into<LabelSet>) -> Self {
        self.registries.push((labels.into(), subscriptions));
        self
    }
}

impl crate::prometheus::EncodeInto for SubscriptionCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let read: Vec<(&LabelSet, Vec<(String, u64)>)> = self
            .registries
            .iter()
            .map(|(l, s)| {
                let apis = s.apis().into_iter();
                (
                    l,
                    apis.map(|a| (s.refused(&a).unwrap_or(0), a))
                        .map(|(n, a)| (a, n))
                        .collect(),
                )
            })
            .collect();
        counter(
            enc,
            "switchyard_subscription_refused_total",
            "Calls refused with 403 subscription_required.",
            read.iter().flat_map(|(l, apis)| {
                apis.iter()
                    .map(move |(api, n)| (row(l, [("api", api.as_str().into())]), *n))
            }),
        )
    }
}

crate::prometheus::collector!(SubscriptionCollector);
