//! The built-in rules: hearth's own automatic acts, recorded in the alert
//! history by rules a person can silence or change.
//!
//! They are laid after the person's rules file: a receiver or rule there
//! with the same name replaces the built-in one (so `notify = []` stops
//! recording an act, and `notify = ["ops"]` mails it instead). Everything
//! the person wrote keeps its place, so an error in their file names the
//! same `rule[N]` and line as it would alone.

use std::collections::BTreeSet;

/// The receiver every built-in rule records to.
pub const HISTORY: &str = "history";

/// One built-in entry: its table name, its name, and its TOML.
struct Entry {
    table: &'static str,
    name: &'static str,
    toml: &'static str,
}

/// A rule that records each put under `$prefix` whose `action` is
/// `$action`, summed up by `$summary`.
macro_rules! recorded {
    ($prefix:literal, $name:literal, $action:literal, $summary:expr) => {
        Entry {
            table: "rule",
            name: $name,
            toml: concat!(
                "name = \"",
                $name,
                "\"\nevent = { prefix = \"",
                $prefix,
                "\", kind = \"put\", match = { action = \"",
                $action,
                "\" } }\nlabels = { severity = \"info\", act = \"",
                $action,
                "\" }\nsummary = \"",
                $summary,
                "\"\nnotify = [\"history\"]\ngroup_by = [\"key\"]\ngroup_wait = \"0s\"\n"
            ),
        }
    };
}

/// An act of the service supervisor, written to `services/history/`.
macro_rules! service_act {
    ($name:literal, $action:literal, $what:literal) => {
        recorded!(
            "services/history/",
            $name,
            $action,
            concat!($what, ": {{ key }} {{ value.instance }}: {{ value.reason }}")
        )
    };
}

/// An act recorded at `acts/` (`hearth_store::acts`).
macro_rules! act {
    ($name:literal, $action:literal, $what:literal) => {
        recorded!("acts/", $name, $action, concat!($what, ": {{ value.subject }}: {{ value.reason }}"))
    };
}

const ENTRIES: &[Entry] = &[
    Entry { table: "receiver", name: HISTORY, toml: "name = \"history\"\nrecord = {}\n" },
    service_act!("hearth-restarted", "restarted", "supervision restarted an instance"),
    service_act!("hearth-replaced", "replaced", "supervision replaced an instance"),
    service_act!("hearth-rolled-back", "rolled-back", "a rollout was rolled back"),
    service_act!("hearth-expired", "expired", "a registration expired"),
    service_act!("hearth-instance-failed", "failed", "an instance failed"),
    act!("hearth-recovered", "recovered", "recovered after a restart"),
    act!("hearth-main-restarted", "restarted", "a machine's main process was restarted"),
    Entry {
        table: "rule",
        name: "hearth-machine-failed",
        toml: "name = \"hearth-machine-failed\"\n\
               event = { prefix = \"machines/\", match = { \"status.state\" = \"failed\" }, resolve_after = \"never\" }\n\
               labels = { severity = \"warning\", act = \"failed\" }\n\
               summary = \"machine {{ value.name }} failed: {{ value.status.reason }}\"\n\
               notify = [\"history\"]\ngroup_by = [\"key\"]\ngroup_wait = \"0s\"\n",
    },
];

/// The built-in rules file, as `hearth alert rules --builtin` shows it.
pub fn text() -> String {
    ENTRIES.iter().map(|e| format!("[[{}]]\n{}", e.table, e.toml)).collect::<Vec<_>>().join("\n")
}

/// The names of the built-in rules.
pub fn rule_names() -> impl Iterator<Item = &'static str> {
    ENTRIES.iter().filter(|e| e.table == "rule").map(|e| e.name)
}

/// The names a rules file gives its `table` entries (`receiver`, `rule`),
/// for a file that is TOML; none otherwise (its own error is reported
/// when it is parsed).
fn names(user: &toml::Table, table: &str) -> BTreeSet<String> {
    user.get(table)
        .and_then(toml::Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("name").and_then(toml::Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The person's rules file with the built-in entries it does not replace
/// laid after it. A file that is not TOML comes back as it is, so that
/// parsing it reports its own error.
pub fn merge(user: &str) -> String {
    let Ok(table) = user.parse::<toml::Table>() else { return user.to_owned() };
    let receivers = names(&table, "receiver");
    let rules = names(&table, "rule");
    let mut merged = user.to_owned();
    for entry in ENTRIES {
        let replaced = match entry.table {
            "receiver" => receivers.contains(entry.name),
            _ => rules.contains(entry.name),
        };
        if replaced {
            continue;
        }
        // An array of tables written inline (`rule = [ ... ]`) cannot be
        // extended with `[[rule]]`: append to it as a table instead.
        if table.get(entry.table).is_some_and(|v| !is_array_of_tables(user, entry.table, v)) {
            continue;
        }
        if !merged.ends_with('\n') && !merged.is_empty() {
            merged.push('\n');
        }
        merged.push_str(&format!("\n[[{}]]\n{}", entry.table, entry.toml));
    }
    merged
}

/// Whether `table` is written as `[[table]]` headers (which more headers
/// extend) rather than as an inline array.
fn is_array_of_tables(user: &str, table: &str, value: &toml::Value) -> bool {
    value.is_array() && user.lines().any(|l| l.trim_start().starts_with(&format!("[[{table}]]")))
}

#[cfg(test)]
mod tests {
    use hearth_alerts::{EventInput, Rules, State};

    use super::*;

    #[test]
    fn the_example_rules_file_checks() {
        let text = include_str!("../../../examples/alerts/rules.toml");
        Rules::parse(&merge(text)).expect("examples/alerts/rules.toml checks");
    }

    #[test]
    fn the_built_in_rules_parse_on_their_own() {
        let rules = Rules::parse(&merge("")).expect("the built-in rules parse");
        assert_eq!(rules.rules.len(), rule_names().count());
        assert!(rules.receiver(HISTORY).is_some());
    }

    #[test]
    fn a_rule_of_the_same_name_replaces_the_built_in_one() {
        let user = "[[rule]]\nname = \"hearth-restarted\"\nevent = { prefix = \"services/history/\" }\n";
        let rules = Rules::parse(&merge(user)).unwrap();
        assert_eq!(rules.rules.iter().filter(|r| r.name == "hearth-restarted").count(), 1);
        assert!(rules.rule("hearth-restarted").unwrap().notify.is_empty());
    }

    #[test]
    fn an_error_in_the_person_s_file_names_its_own_place() {
        let user = "[[rule]]\nname = \"a\"\nevent = { prefix = \"x/\" }\n\n[[rule]]\nname = \"b\"\nlog = { source = \"app:x\", regex = \"(\" }\n";
        let error = Rules::parse(&merge(user)).unwrap_err().to_string();
        assert!(error.contains("rule \"b\".log.regex"), "{error}");
        let user = "[[rule]]\nname = \"a\"\nevent = { prefix = \"x/\" }\n\n[[rule]]\nname = 7\n";
        let error = Rules::parse(&merge(user)).unwrap_err().to_string();
        assert!(error.contains("rule[1].name"), "{error}");
    }

    #[test]
    fn a_file_that_is_not_toml_reports_its_own_error() {
        let error = Rules::parse(&merge("[[rule]\nname = 1")).unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn rules_written_as_an_inline_array_keep_the_built_in_receiver() {
        let user = "rule = [{ name = \"a\", event = { prefix = \"x/\" }, notify = [\"history\"] }]\n";
        let rules = Rules::parse(&merge(user)).unwrap();
        assert!(rules.rule("a").is_some());
        assert!(rules.rule("hearth-restarted").is_none(), "an inline array cannot be extended");
    }

    #[test]
    fn a_supervision_restart_is_recorded() {
        let rules = Rules::parse(&merge("")).unwrap();
        let mut state = State::default();
        let value =
            br#"{"at_ms":1,"instance":"web-1","action":"restarted","reason":"its check failed 3 times"}"#;
        state.observe_event(
            &rules,
            &EventInput::put("services/history/web/000000000000001-0001", value),
            1000,
        );
        state.evaluate(&rules, 1000);
        let plan = state.plan(&rules, 1000);
        assert_eq!(plan.notifications.len(), 1, "{plan:?}");
        let n = &plan.notifications[0];
        assert_eq!((n.rule.as_str(), n.receiver.as_str()), ("hearth-restarted", HISTORY));
        let summary = &n.alerts[0].annotations["summary"];
        assert!(summary.contains("web-1") && summary.contains("its check failed"), "{summary}");
    }

    #[test]
    fn a_recovery_after_a_restart_and_a_main_process_restart_are_recorded() {
        let rules = Rules::parse(&merge("")).unwrap();
        let mut state = State::default();
        let recovered = br#"{"at_ms":1,"subject":"machine:db","action":"recovered","reason":"adopted its VM (pid 7), still running when the daemon restarted"}"#;
        let restarted = br#"{"at_ms":2,"subject":"machine:db","action":"restarted","reason":"the agent restarted the main process (exited with code 3); restart 1"}"#;
        state.observe_event(&rules, &EventInput::put("acts/000000000000001-000000", recovered), 1000);
        state.observe_event(&rules, &EventInput::put("acts/000000000000002-000001", restarted), 1000);
        state.evaluate(&rules, 1000);
        let plan = state.plan(&rules, 1000);
        let mut seen: Vec<(&str, &str)> = plan
            .notifications
            .iter()
            .map(|n| (n.rule.as_str(), n.alerts[0].annotations["summary"].as_str()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                (
                    "hearth-main-restarted",
                    "a machine's main process was restarted: machine:db: the agent restarted the main process (exited with code 3); restart 1"
                ),
                (
                    "hearth-recovered",
                    "recovered after a restart: machine:db: adopted its VM (pid 7), still running when the daemon restarted"
                ),
            ]
        );
    }

    #[test]
    fn a_failed_machine_is_recorded_and_resolves_when_it_runs_again() {
        let rules = Rules::parse(&merge("")).unwrap();
        let mut state = State::default();
        let failed = br#"{"name":"db","status":{"state":"failed","reason":"its VM process was gone"}}"#;
        state.observe_event(&rules, &EventInput::put("machines/db", failed), 1000);
        state.evaluate(&rules, 1000);
        let plan = state.plan(&rules, 1000);
        assert_eq!(plan.notifications.len(), 1);
        assert!(plan.notifications[0].alerts[0].annotations["summary"].contains("db failed"));
        for n in &plan.notifications {
            state.acknowledge(n);
        }
        let running = br#"{"name":"db","status":{"state":"running"}}"#;
        state.observe_event(&rules, &EventInput::put("machines/db", running), 2000);
        state.evaluate(&rules, 2000);
        assert!(state.alerts.values().all(|a| a.phase != hearth_alerts::Phase::Firing));
    }
}
