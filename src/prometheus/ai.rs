//! Collectors of the AI path: model versions, spend meters, prompt APIs
//! (feature `json`).

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::layers::classes;
use super::{LabelSet, counter, gauge, histogram, row, signed};
use crate::model::{ModelHandle, VersionStats};
use crate::platform::prompt::PromptHandle;
use crate::spend::{GroupBy, Meter, MeterStats};

// === ModelCollector ===

/// The versions of a [`ModelRouter`](crate::model::ModelRouter)'s
/// catalog, by `model` (the version's name): requests, responses by
/// status class, errors, in flight, latency (to response headers, and to
/// the first byte of the answer), tokens by `kind` (`prompt`,
/// `completion`, and of those `cached`, `cache_write`, `reasoning`),
/// truncated answers, fallbacks, cost; each alias's weights by `alias` and
/// `model`; and the provider keys' 429s by `upstream` and `key` (where
/// the key came from, never the key).
///
/// A version's counters are the version's, whichever alias chose it.
#[derive(Clone, Debug, Default)]
pub struct ModelCollector {
    routers: Vec<(LabelSet, ModelHandle)>,
}

impl ModelCollector {
    /// The versions of the router behind `handle`, labelled `labels`.
    pub fn new(handle: ModelHandle, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(handle, labels)
    }

    /// Adds another router to the same families.
    pub fn with(mut self, handle: ModelHandle, labels: impl Into<LabelSet>) -> Self {
        self.routers.push((labels.into(), handle));
        self
    }
}

impl crate::prometheus::EncodeInto for ModelCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let read: Vec<_> = self.routers.iter().map(|(l, h)| (l, h.stats())).collect();
        let versions = || {
            read.iter().flat_map(|(l, stats)| {
                stats
                    .iter()
                    .map(move |v| (row(l, [("model", v.model.as_str().into())]), v))
            })
        };
        type Read = fn(&VersionStats) -> u64;
        let count = |enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, get: Read| {
            counter(enc, name, help, versions().map(|(r, v)| (r, get(v))))
        };
        count(
            enc,
            "switchyard_model_requests_total",
            "Requests sent to a model version.",
            |v| v.requests,
        )?;
        counter(
            enc,
            "switchyard_model_responses_total",
            "Responses of a model version by status class.",
            read.iter().flat_map(|(l, stats)| {
                stats.iter().flat_map(move |v| {
                    classes(&v.responses).map(|(class, n)| {
                        let labels = [("model", v.model.as_str().into()), ("class", class.into())];
                        (row(l, labels), n)
                    })
                })
            }),
        )?;
        count(
            enc,
            "switchyard_model_errors_total",
            "Calls to a model version that failed without a response, or whose answer's body failed.",
            |v| v.errors + v.body_errors,
        )?;
        gauge(
            enc,
            "switchyard_model_in_flight",
            "Requests to a model version whose answer has not finished.",
            versions().map(|(r, v)| (r, signed(v.in_flight))),
        )?;
        histogram(
            enc,
            "switchyard_model_latency_seconds",
            "Time from the call to a model version to its response headers.",
            versions().map(|(r, v)| (r, &v.latency)),
        )?;
        counter(
            enc,
            "switchyard_model_tokens_total",
            "Tokens counted from a model version's responses.",
            read.iter().flat_map(|(l, stats)| {
                stats.iter().flat_map(move |v| {
                    [
                        ("prompt", v.prompt_tokens),
                        ("completion", v.completion_tokens),
                        ("cached", v.cached_tokens),
                        ("cache_write", v.cache_write_tokens),
                        ("reasoning", v.reasoning_tokens),
                    ]
                    .map(|(kind, n)| {
                        let labels = [("model", v.model.as_str().into()), ("kind", kind.into())];
                        (row(l, labels), n)
                    })
                })
            }),
        )?;
        count(
            enc,
            "switchyard_model_truncated_total",
            "Answers of a model version cut short (client gone, stream broken); their tokens are those counted before.",
            |v| v.truncated,
        )?;
        histogram(
            enc,
            "switchyard_model_time_to_first_token_seconds",
            "Time from the call to a model version to the first byte of its answer's body.",
            versions().map(|(r, v)| (r, &v.time_to_first_token)),
        )?;
        let keys: Vec<_> = self.routers.iter().map(|(l, h)| (l, h.keys())).collect();
        counter(
            enc,
            "switchyard_model_key_rate_limited_total",
            "429 answers a provider gave to one of its API keys (the key named by where it came from).",
            keys.iter().flat_map(|(l, keys)| {
                keys.iter().map(move |k| {
                    let labels = [
                        ("upstream", k.upstream.as_str().into()),
                        ("key", k.source.as_str().into()),
                    ];
                    (row(l, labels), k.rate_limited)
                })
            }),
        )?;
        count(
            enc,
            "switchyard_model_fallbacks_total",
            "Requests a model version failed that were retried on the fallback.",
            |v| v.fallbacks,
        )?;
        count(
            enc,
            "switchyard_model_cost_micros_total",
            "Cost of a model version's priced answers, in micro-units of the price catalog's currency.",
            |v| v.cost_micros,
        )?;
        let weights: Vec<_> = self
            .routers
            .iter()
            .flat_map(|(l, h)| {
                h.catalog().aliases.into_iter().filter_map(move |a| {
                    let versions = h.alias_stats(&a.name)?;
                    Some((l, a.name, versions))
                })
            })
            .collect();
        gauge(
            enc,
            "switchyard_model_weight",
            "A model version's weight in an alias.",
            weights.iter().flat_map(|(l, alias, versions)| {
                versions.iter().map(move |v| {
                    let labels = [
                        ("alias", alias.as_str().into()),
                        ("model", v.model.as_str().into()),
                    ];
                    (row(l, labels), i64::from(v.weight.unwrap_or(0)))
                })
            }),
        )
    }
}

crate::prometheus::collector!(ModelCollector);

// === SpendCollector ===

/// A [`Meter`]'s admissions by `outcome` (`admitted`, `refused_tokens`,
/// `refused_budget`, `refused_concurrency`, `refused_unpriced`,
/// `downgraded`), budget alerts and shared-store errors; with a ledger,
/// cost and tokens (`kind`: `input`, `output`) by `tenant` and by
/// `alias`.
#[derive(Clone, Debug, Default)]
pub struct SpendCollector {
    meters: Vec<(LabelSet, Meter)>,
}

impl SpendCollector {
    /// The counters of `meter` (a clone shares them), labelled `labels`.
    pub fn new(meter: Meter, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(meter, labels)
    }

    /// Adds another meter to the same families.
    pub fn with(mut self, meter: Meter, labels: impl Into<LabelSet>) -> Self {
        self.meters.push((labels.into(), meter));
        self
    }
}

impl crate::prometheus::EncodeInto for SpendCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let read: Vec<_> = self.meters.iter().map(|(l, m)| (l, m.stats())).collect();
        counter(
            enc,
            "switchyard_spend_admissions_total",
            "Requests a model route's meter admitted, refused (by token limit, budget, concurrency cap, unpriced model) or downgraded.",
            read.iter().flat_map(|(l, s)| {
                [
                    ("admitted", s.admitted),
                    ("refused_tokens", s.refused_tokens),
                    ("refused_budget", s.refused_budget),
                    ("refused_concurrency", s.refused_concurrency),
                    ("refused_unpriced", s.refused_unpriced),
                    ("downgraded", s.downgraded),
                ]
                .map(|(outcome, n)| (row(l, [("outcome", outcome.into())]), n))
            }),
        )?;
        type Read = fn(&MeterStats) -> u64;
        let families: [(&str, &str, Read); 2] = [
            (
                "switchyard_spend_budget_alerts_total",
                "Budget thresholds crossed.",
                |s| s.alerts,
            ),
            (
                "switchyard_spend_backend_errors_total",
                "Admissions and settlements the shared store (Redis) failed.",
                |s| s.backend_errors,
            ),
        ];
        for (name, help, get) in families {
            counter(
                enc,
                name,
                help,
                read.iter().map(|(l, s)| (row(l, []), get(s))),
            )?;
        }
        for (by, label) in [(GroupBy::Tenant, "tenant"), (GroupBy::Alias, "alias")] {
            let rows: Vec<_> = self
                .meters
                .iter()
                .filter_map(|(l, m)| Some((l, m.ledger()?.totals(by))))
                .collect();
            counter(
                enc,
                &format!("switchyard_spend_{label}_cost_micros_total"),
                "Cost of answers by this dimension, in micro-units, from the route's ledger.",
                rows.iter().flat_map(|(l, list)| {
                    list.iter()
                        .map(move |r| (row(l, [(label, r.key.as_str().into())]), r.cost_micros))
                }),
            )?;
            counter(
                enc,
                &format!("switchyard_spend_{label}_tokens_total"),
                "Tokens of answers by this dimension, from the route's ledger.",
                rows.iter().flat_map(|(l, list)| {
                    list.iter().flat_map(move |r| {
                        [("input", r.input_tokens), ("output", r.output_tokens)].map(|(kind, n)| {
                            let labels = [(label, r.key.as_str().into()), ("kind", kind.into())];
                            (row(l, labels), n)
                        })
                    })
                }),
            )?;
        }
        Ok(())
    }
}

crate::prometheus::collector!(SpendCollector);

// === PromptCollector ===

/// A prompt API's refusals, and per `version` (of its template): tokens
/// by `kind` (`prompt`, `completion`), cost and invalid answers. Its
/// versions' traffic is a split's: add
/// [`split()`](PromptHandle::split) to a
/// [`SplitCollector`](super::SplitCollector) for it.
#[derive(Clone, Debug, Default)]
pub struct PromptCollector {
    prompts: Vec<(LabelSet, PromptHandle)>,
}

impl PromptCollector {
    /// The counters of the prompt API behind `handle`, labelled `labels`.
    pub fn new(handle: PromptHandle, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(handle, labels)
    }

    /// Adds another prompt API to the same families.
    pub fn with(mut self, handle: PromptHandle, labels: impl Into<LabelSet>) -> Self {
        self.prompts.push((labels.into(), handle));
        self
    }
}

impl crate::prometheus::EncodeInto for PromptCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let read: Vec<_> = self.prompts.iter().map(|(l, h)| (l, h.stats())).collect();
        counter(
            enc,
            "switchyard_prompt_refused_total",
            "Prompt API calls refused before any version (bad variables, body, method).",
            read.iter().map(|(l, s)| (row(l, []), s.refused)),
        )?;
        let versions = || {
            read.iter().flat_map(|(l, s)| {
                s.versions
                    .iter()
                    .map(move |v| (*l, v.split.name.as_str(), v))
            })
        };
        counter(
            enc,
            "switchyard_prompt_tokens_total",
            "Tokens of a prompt version's answers, by kind.",
            versions().flat_map(|(l, version, v)| {
                [
                    ("prompt", v.prompt_tokens),
                    ("completion", v.completion_tokens),
                ]
                .map(|(kind, n)| {
                    let labels = [("version", version.into()), ("kind", kind.into())];
                    (row(l, labels), n)
                })
            }),
        )?;
        counter(
            enc,
            "switchyard_prompt_cost_micros_total",
            "What a prompt version's answers cost, in micro-units, as the model route's meter priced them.",
            versions()
                .map(|(l, version, v)| (row(l, [("version", version.into())]), v.cost_micros)),
        )?;
        counter(
            enc,
            "switchyard_prompt_invalid_answers_total",
            "A prompt version's answers refused with 502 (not the text or JSON asked for).",
            versions()
                .map(|(l, version, v)| (row(l, [("version", version.into())]), v.invalid_answers)),
        )
    }
}

crate::prometheus::collector!(PromptCollector);
