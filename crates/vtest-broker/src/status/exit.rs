//! How a worker ended, as one enum from where the broker decides it to the
//! log, `vtestd status --json` and the metrics, which name it by
//! [`ExitCategory::name`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vtest_control::ExitReason;

/// A syscall the worker's seccomp filter refused, as the worker reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syscall {
    pub number: i64,
    /// Its name on this architecture (`unknown` where the table has none).
    pub name: String,
}

impl fmt::Display for Syscall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.number)
    }
}

/// Why a worker ended, as counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitCategory {
    /// Its client disconnected.
    Clean,
    ProtocolError,
    RendererError,
    LimitExceeded,
    IoError,
    /// It ran out of one of its process limits (fds, memory).
    WorkerExhausted,
    InitFailed,
    /// Killed by its seccomp filter; the syscall where the worker reported
    /// it before dying (`None`: a SIGSYS without a report).
    SeccompViolation {
        syscall: Option<Syscall>,
    },
    /// Killed by the hang watchdog.
    Hang,
    /// Killed by a signal the broker did not send.
    Signal,
    /// Ended by the broker: its stop, a reload, the end of the start-up probe.
    Shutdown,
    Unknown,
}

impl ExitCategory {
    /// Every category, in the order status and metrics list them.
    pub const ALL: [ExitCategory; 12] = [
        ExitCategory::Clean,
        ExitCategory::ProtocolError,
        ExitCategory::RendererError,
        ExitCategory::LimitExceeded,
        ExitCategory::IoError,
        ExitCategory::WorkerExhausted,
        ExitCategory::InitFailed,
        ExitCategory::SeccompViolation { syscall: None },
        ExitCategory::Hang,
        ExitCategory::Signal,
        ExitCategory::Shutdown,
        ExitCategory::Unknown,
    ];

    /// The name status, metrics and scripts know it by.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::ProtocolError => "protocol_error",
            Self::RendererError => "renderer_error",
            Self::LimitExceeded => "limit_exceeded",
            Self::IoError => "io_error",
            Self::WorkerExhausted => "worker_exhausted",
            Self::InitFailed => "init_failed",
            Self::SeccompViolation { .. } => "seccomp_violation",
            Self::Hang => "hang",
            Self::Signal => "signal",
            Self::Shutdown => "shutdown",
            Self::Unknown => "unknown",
        }
    }

    /// The category named `name` (a seccomp one without its syscall).
    pub fn from_name(name: &str) -> Option<ExitCategory> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The category of a session end the worker reported.
    pub fn of_reason(reason: &ExitReason) -> ExitCategory {
        match reason {
            ExitReason::ClientDisconnected => Self::Clean,
            ExitReason::ProtocolError { .. } => Self::ProtocolError,
            ExitReason::RendererError { .. } => Self::RendererError,
            ExitReason::LimitExceeded { .. } => Self::LimitExceeded,
            ExitReason::IoError { .. } => Self::IoError,
            ExitReason::WorkerExhausted { .. } => Self::WorkerExhausted,
            ExitReason::InitFailed { .. } => Self::InitFailed,
        }
    }

    /// A clean end or one the broker asked for: nothing to warn about.
    pub fn expected(&self) -> bool {
        matches!(self, Self::Clean | Self::Shutdown)
    }
}

impl fmt::Display for ExitCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// As its name: the JSON is the same whatever the variant carries.
impl Serialize for ExitCategory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ExitCategory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown exit category {name:?}")))
    }
}

/// Worker ends by category (`counters.worker_exits`: name → count).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExitCounts(BTreeMap<String, u64>);

impl ExitCounts {
    pub fn add(&mut self, category: &ExitCategory) {
        *self.0.entry(category.name().to_string()).or_default() += 1;
    }

    pub fn get(&self, category: &ExitCategory) -> u64 {
        self.0.get(category.name()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_strings_status_and_metrics_always_had() {
        let names: Vec<&str> = ExitCategory::ALL.iter().map(ExitCategory::name).collect();
        assert_eq!(
            names,
            [
                "clean",
                "protocol_error",
                "renderer_error",
                "limit_exceeded",
                "io_error",
                "worker_exhausted",
                "init_failed",
                "seccomp_violation",
                "hang",
                "signal",
                "shutdown",
                "unknown",
            ]
        );
        for c in ExitCategory::ALL {
            assert_eq!(ExitCategory::from_name(c.name()), Some(c));
        }
        assert_eq!(ExitCategory::from_name("seccomp violation"), None);
    }

    #[test]
    fn serialises_as_its_name_with_or_without_a_syscall() {
        let seccomp = ExitCategory::SeccompViolation {
            syscall: Some(Syscall {
                number: 41,
                name: "socket".into(),
            }),
        };
        assert_eq!(
            serde_json::to_string(&seccomp).unwrap(),
            "\"seccomp_violation\""
        );
        assert_eq!(
            serde_json::to_string(&ExitCategory::Hang).unwrap(),
            "\"hang\""
        );
        let back: ExitCategory = serde_json::from_str("\"seccomp_violation\"").unwrap();
        assert_eq!(back, ExitCategory::SeccompViolation { syscall: None });
        assert!(serde_json::from_str::<ExitCategory>("\"bored\"").is_err());
        assert_eq!(format!("{:8}|", ExitCategory::Hang), "hang    |");
    }

    #[test]
    fn reported_reasons_map_to_their_category() {
        let text = || String::from("x");
        let cases = [
            (ExitReason::ClientDisconnected, "clean"),
            (
                ExitReason::ProtocolError { reason: text() },
                "protocol_error",
            ),
            (
                ExitReason::RendererError { reason: text() },
                "renderer_error",
            ),
            (
                ExitReason::LimitExceeded {
                    limit: text(),
                    value: 2,
                    max: 1,
                },
                "limit_exceeded",
            ),
            (ExitReason::IoError { reason: text() }, "io_error"),
            (
                ExitReason::WorkerExhausted {
                    resource: text(),
                    reason: text(),
                },
                "worker_exhausted",
            ),
            (ExitReason::InitFailed { reason: text() }, "init_failed"),
        ];
        for (reason, name) in cases {
            assert_eq!(ExitCategory::of_reason(&reason).name(), name, "{reason:?}");
        }
        assert!(ExitCategory::Clean.expected() && ExitCategory::Shutdown.expected());
        assert!(!ExitCategory::Signal.expected());
    }

    #[test]
    fn counts_are_kept_by_name() {
        let mut counts = ExitCounts::default();
        counts.add(&ExitCategory::Hang);
        counts.add(&ExitCategory::SeccompViolation {
            syscall: Some(Syscall {
                number: 25,
                name: "mremap".into(),
            }),
        });
        counts.add(&ExitCategory::SeccompViolation { syscall: None });
        assert_eq!(counts.get(&ExitCategory::Hang), 1);
        assert_eq!(
            counts.get(&ExitCategory::SeccompViolation { syscall: None }),
            2
        );
        assert_eq!(counts.get(&ExitCategory::Clean), 0);
        assert_eq!(
            serde_json::to_string(&counts).unwrap(),
            r#"{"hang":1,"seccomp_violation":2}"#
        );
    }
}
