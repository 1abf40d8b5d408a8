//! tc netem on a machine's tap: delay and loss show up in ping.
//!
//! netem shapes the tap's egress, the traffic towards the machine, so
//! shaping b's tap delays (or drops) a's echo requests on their way to b.
//!
//! Kernels without `sch_netem` (some minimal VM kernels) cannot shape with
//! netem: there the tests check that hearth says so clearly, and are counted
//! as skipped (`make test` prints them at the end), unless
//! `HEARTH_REQUIRE_NETEM=1` or `HEARTH_NO_SKIP=1` makes that a failure. Any
//! other error fails. (hearth then delays with its NFQUEUE delay line:
//! `shaping_queue.rs`.)

use crate::support;

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::support::{Lab, Machine, ping, sh};
use hearth_net::link::Netns;
use hearth_net::shaping::{self, Error, Netem};

/// A host with one bridge and machines a and b on it.
fn two_machines(lab: &mut Lab) -> (Netns, Machine, Machine) {
    let host = lab.host_with_bridge("hb-s", Ipv4Addr::new(10, 95, 0, 1));
    let a = lab.machine("a", &host, "hb-s", "ht-a", Ipv4Addr::new(10, 95, 0, 10), None);
    let b = lab.machine("b", &host, "hb-s", "ht-b", Ipv4Addr::new(10, 95, 0, 11), None);
    (host, a, b)
}

fn netem(delay_ms: u64, jitter_ms: u64, loss_percent: f32) -> Netem {
    Netem { delay: Duration::from_millis(delay_ms), jitter: Duration::from_millis(jitter_ms), loss_percent }
}

/// Applies `netem`; `false` if this kernel has no netem (after checking
/// that the error says what to do, and recording the skip), and then the
/// test returns.
#[must_use]
fn apply_or_skip(host: &Netns, tap: &str, netem: &Netem) -> bool {
    match shaping::apply(host, tap, Some(netem)) {
        Ok(()) => true,
        Err(error @ Error::NetemUnsupported { .. }) => {
            assert_eq!(error.code(), "unsupported");
            assert!(error.to_string().contains("sch_netem"), "{error}");
            assert!(
                std::env::var_os("HEARTH_REQUIRE_NETEM").is_none(),
                "HEARTH_REQUIRE_NETEM is set and this kernel has no netem: {error}"
            );
            eprintln!("{error}");
            support::skip("the kernel has no sch_netem, so tc netem cannot shape");
            false
        }
        Err(error) => panic!("netem on {tap}: {error}"),
    }
}

#[test]
fn a_delay_shows_in_the_round_trip_and_goes_away_when_removed() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        let rtt = |what| ping(&a.ns, b.ip, 5, "0.2").avg_rtt_ms.unwrap_or_else(|| panic!("no reply {what}"));
        let baseline = rtt("before");
        assert!(baseline < 20.0, "baseline round trip {baseline} ms");

        if !apply_or_skip(&host, &b.tap, &netem(100, 0, 0.0)) {
            return;
        }
        let line = shaping::current(&host, &b.tap).expect("current").expect("a netem qdisc");
        assert!(line.contains("delay 100ms"), "{line}");
        let delayed = rtt("with delay");
        assert!((delayed - 100.0).abs() <= 30.0, "round trip {delayed} ms, wanted 100 ms ± 30");

        // Applying again replaces the qdisc rather than stacking one.
        shaping::apply(&host, &b.tap, Some(&netem(50, 10, 0.0))).expect("replace");
        let line = shaping::current(&host, &b.tap).expect("current").expect("a netem qdisc");
        assert!(line.contains("delay 50ms") && line.contains("10ms"), "{line}");
        assert_eq!(sh(&host, &["tc", "qdisc", "show", "dev", &b.tap]).lines().count(), 1);

        shaping::apply(&host, &b.tap, None).expect("remove");
        assert_eq!(shaping::current(&host, &b.tap).expect("current"), None);
        let after = rtt("after");
        assert!(after < 20.0, "round trip {after} ms after removing the delay");
    });
}

#[test]
fn loss_shows_as_a_loss_rate() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        if !apply_or_skip(&host, &b.tap, &netem(0, 0, 50.0)) {
            return;
        }
        let line = shaping::current(&host, &b.tap).expect("current").expect("a netem qdisc");
        assert!(line.contains("loss 50%"), "{line}");
        let lossy = ping(&a.ns, b.ip, 40, "0.05");
        // Binomial(40, 0.5) falls outside 8..=32 about once in 10^5 runs.
        assert!((8..=32).contains(&lossy.received), "{} of 40 answered with 50% loss", lossy.received);

        shaping::apply(&host, &b.tap, None).expect("remove");
        assert!(ping(&a.ns, b.ip, 10, "0.05").all_answered(), "loss after removing it");
    });
}

#[test]
fn removing_when_nothing_is_shaped_is_fine() {
    support::run(|lab| {
        let (host, _a, b) = two_machines(lab);
        assert_eq!(shaping::current(&host, &b.tap).expect("current"), None);
        shaping::apply(&host, &b.tap, None).expect("remove nothing");
        shaping::apply(&host, &b.tap, None).expect("remove nothing again");
        shaping::apply(&host, "ht-gone", None).expect("remove from a tap that is gone");
    });
}

#[test]
fn bad_input_is_refused_before_tc_runs() {
    support::run(|lab| {
        let host = lab.netns("host");
        let error = shaping::apply(&host, "ht-x", Some(&netem(0, 0, 150.0))).expect_err("150% loss");
        assert!(matches!(error, Error::Invalid { .. }), "{error:?}");
        assert!(error.to_string().contains("150% is not between 0% and 100%"), "{error}");
        let error = shaping::apply(&host, "not a tap", None).expect_err("bad name");
        assert!(matches!(error, Error::InvalidName { .. }), "{error:?}");
    });
}
