//! The wire types: one per request and response body.
//!
//! Request types refuse unknown fields, so a typo is an error rather than a
//! silently ignored option.
//!
//! One module per resource; every type is re-exported here, so
//! `hearth_client::types::Machine` is the one path to each.

/// Declares a wire enum: a closed set of words, each written on the wire
/// as the string given, with `as_str`, `Display`, `FromStr` and comparison
/// with a `&str` (so `machine.state == "running"` reads as it did when the
/// field was a string).
macro_rules! wire_enum {
    // `$text` is a `tt`, not a `literal`: a `literal` reaches derive macros
    // wrapped in an invisible group, which utoipa does not look into, and
    // the document would name the variants instead of their words.
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:tt,)+ }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize, ::utoipa::ToSchema,
        )]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in the order the API documents them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as it is written on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                // `pad`, so that `{:<8}` lines up columns as a string would.
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::types::UnknownValue;

            fn from_str(text: &str) -> Result<Self, $crate::types::UnknownValue> {
                $name::ALL.iter().copied().find(|v| v.as_str() == text).ok_or_else(|| $crate::types::UnknownValue {
                    what: stringify!($name),
                    value: text.to_owned(),
                    expected: $name::ALL.iter().map(|v| v.as_str()).collect(),
                })
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

/// A word that is none of a wire enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {what}: use one of {}", expected.join(", "))]
pub struct UnknownValue {
    /// The enum's name, e.g. `MachineState`.
    pub what: &'static str,
    /// The word that matched no value.
    pub value: String,
    /// The values there are.
    pub expected: Vec<&'static str>,
}

mod alerts;
mod apps;
mod config;
mod errors;
mod events;
mod hosts;
mod images;
mod kv;
mod labs;
mod machines;
mod metrics;
mod networks;
mod services;
mod system;
mod triggers;
mod ui;
mod workflows;

pub use alerts::*;
pub use apps::*;
pub use config::*;
pub use errors::*;
pub use events::*;
pub use hosts::*;
pub use images::*;
pub use kv::*;
pub use labs::*;
pub use machines::*;
pub use metrics::*;
pub use networks::*;
pub use services::*;
pub use system::*;
pub use triggers::*;
pub use ui::*;
pub use workflows::*;

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::str::FromStr;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::*;

    /// Each value is written as its word, read back from it, and parsed
    /// from it; the words are the strings these fields held before they
    /// were enums.
    fn check<T>(all: &[T], words: &[&str])
    where
        T: Serialize
            + DeserializeOwned
            + FromStr<Err = UnknownValue>
            + fmt::Display
            + fmt::Debug
            + Copy
            + PartialEq,
    {
        let written: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(written, words);
        for value in all {
            let json = serde_json::to_string(value).expect("serialize");
            assert_eq!(json, format!("\"{value}\""));
            assert_eq!(serde_json::from_str::<T>(&json).expect("deserialize"), *value);
            assert_eq!(value.to_string().parse::<T>().expect("parse"), *value);
        }
    }

    #[test]
    fn wire_enums_are_written_as_the_words_they_replaced() {
        check(StoreBackend::ALL, &["redb", "etcd"]);
        check(Backend::ALL, &["qemu-tcg", "qemu-kvm", "firecracker"]);
        check(Desired::ALL, &["running", "stopped", "sleeping"]);
        check(
            MachineState::ALL,
            &["created", "starting", "running", "stopping", "stopped", "failed", "lost", "sleeping"],
        );
        check(
            LabMachineState::ALL,
            &[
                "created", "starting", "running", "stopping", "stopped", "failed", "lost", "sleeping",
                "missing",
            ],
        );
        check(HostState::ALL, &["ready", "draining", "lost"]);
        check(FaultKind::ALL, &["partition", "delay", "loss"]);
        check(ImageSource::ALL, &["registry", "debootstrap"]);
        check(LogStream::ALL, &["stdout", "stderr", "request", "hearth"]);
        check(RunStatus::ALL, &["running", "waiting", "completed", "failed", "cancelled"]);
        check(StartedBy::ALL, &["cli", "api", "webhook", "cron", "event", "child", "alert"]);
        check(RunLogSource::ALL, &["log", "output"]);
        check(TriggerKind::ALL, &["cron", "event", "webhook"]);
        check(TriggerSource::ALL, &["manifest", "api"]);
        check(Health::ALL, &["passing", "warning", "critical", "sleeping"]);
    }

    #[test]
    fn lab_machines_have_every_machine_state() {
        for state in MachineState::ALL {
            assert_eq!(LabMachineState::from(*state).as_str(), state.as_str());
        }
    }

    #[test]
    fn enums_compare_with_words_and_pad_like_strings() {
        assert!(MachineState::Running == "running");
        assert!(MachineState::Running != "stopped");
        assert_eq!(format!("[{:<8}]", LogStream::Stdout), "[stdout  ]");
        let error = "vmware".parse::<Backend>().expect_err("not a backend");
        assert_eq!(
            error.to_string(),
            "\"vmware\" is not a Backend: use one of qemu-tcg, qemu-kvm, firecracker"
        );
    }

    #[test]
    fn an_unknown_word_is_refused_when_read() {
        let error = serde_json::from_str::<MachineState>("\"paused\"").expect_err("not a state");
        assert!(error.to_string().contains("unknown variant `paused`"), "{error}");
    }
}
