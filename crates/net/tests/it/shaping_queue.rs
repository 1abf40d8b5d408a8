//! Delays without netem: the NFQUEUE delay line, measured with ping.
//!
//! A [`Shaper`] forced to the queue sends what b's tap carries towards b
//! (bridged from a, or sent by the host) through a queue that the delay
//! line holds for the delay; healing takes the rules, the queue and the
//! bridge's netfilter flag away again. The lab's host namespace starts with
//! `bridge-nf-call-iptables` off, so the tests also show that the shaper
//! turns bridged netfilter on for its own bridge rather than relying on the
//! namespace's setting.

use crate::support;

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::support::{Lab, Machine, ping, sh};
use hearth_net::delay::{self, DelayLine, Shape};
use hearth_net::firewall;
use hearth_net::link::{self, Netns};
use hearth_net::shaping::{self, Backend, Error, Shaper, TapDelay};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// A host with bridged netfilter off, one bridge, and machines a and b.
fn two_machines(lab: &mut Lab) -> (Netns, Machine, Machine) {
    let host = lab.host_with_bridge("hb-q", GATEWAY);
    sh(&host, &["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0"]);
    let a = lab.machine("a", &host, "hb-q", "ht-qa", Ipv4Addr::new(10, 96, 0, 10), None);
    let b = lab.machine("b", &host, "hb-q", "ht-qb", Ipv4Addr::new(10, 96, 0, 11), None);
    (host, a, b)
}

fn delay_b(b: &Machine, delay_ms: u64, jitter_ms: u64) -> TapDelay {
    TapDelay {
        tap: b.tap.clone(),
        bridge: "hb-q".to_owned(),
        ip: b.ip,
        shape: Shape { delay: Duration::from_millis(delay_ms), jitter: Duration::from_millis(jitter_ms) },
    }
}

fn queue_shaper(host: &Netns, name: &str) -> Shaper {
    Shaper::new(host.clone(), name).with_backend(Backend::Queue)
}

fn rtt(from: &Netns, to: Ipv4Addr, what: &str) -> f64 {
    ping(from, to, 8, "0.1").avg_rtt_ms.unwrap_or_else(|| panic!("no reply {what}"))
}

/// The queues bound in `ns`, from the kernel's own list.
fn bound_queues(ns: &Netns) -> Vec<u16> {
    let listed = sh(ns, &["cat", "/proc/net/netfilter/nfnetlink_queue"]);
    listed.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect()
}

fn bridge_nf_call_iptables(host: &Netns) -> String {
    sh(host, &["cat", "/sys/class/net/hb-q/bridge/nf_call_iptables"]).trim().to_owned()
}

/// Everything a shaper may leave is gone: rules, jump, queues, flag, and
/// the mangle table iptables made for them.
fn assert_nothing_left(host: &Netns, chain: &str) {
    assert_eq!(delay::chain_state(host, chain).expect("chain state"), (false, false), "chain {chain} left");
    let tables = sh(host, &["nft", "list", "tables"]);
    assert!(!tables.contains("table ip mangle"), "the mangle table was left: {tables}");
    assert_eq!(bound_queues(host), Vec::<u16>::new(), "queues left bound");
    assert_eq!(bridge_nf_call_iptables(host), "0", "bridged netfilter left on");
}

#[test]
fn a_queued_delay_shows_in_the_round_trip_and_heals_leaving_nothing() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        let baseline = rtt(&a.ns, b.ip, "before");
        assert!(baseline < 20.0, "baseline round trip {baseline} ms");

        let mut shaper = queue_shaper(&host, "hearth-tq");
        let taps = [a.tap.clone(), b.tap.clone()];
        shaper.apply(&taps, &[delay_b(&b, 100, 0)]).expect("delay b");
        let queue = shaper.queue_of(&b.tap).expect("b's queue");
        assert_eq!(bound_queues(&host), vec![queue]);
        assert_eq!(delay::chain_state(&host, "hearth-tq-delay").expect("chain state"), (true, true));
        assert_eq!(bridge_nf_call_iptables(&host), "1");

        // Bridged traffic from a, and what the host itself sends to b.
        let delayed = rtt(&a.ns, b.ip, "with delay");
        assert!((90.0..200.0).contains(&delayed), "round trip a -> b {delayed} ms, wanted 100 ms");
        let from_host = rtt(&host, b.ip, "from the host");
        assert!((90.0..200.0).contains(&from_host), "round trip host -> b {from_host} ms, wanted 100 ms");

        // Changing the delay keeps the queue and replaces no rule.
        shaper.apply(&taps, &[delay_b(&b, 40, 0)]).expect("change the delay");
        assert_eq!(shaper.queue_of(&b.tap), Some(queue));
        let changed = rtt(&a.ns, b.ip, "with the new delay");
        assert!((35.0..100.0).contains(&changed), "round trip {changed} ms, wanted 40 ms");

        shaper.apply(&taps, &[]).expect("heal");
        assert_eq!(shaper.queue_of(&b.tap), None);
        assert_nothing_left(&host, "hearth-tq-delay");
        let after = rtt(&a.ns, b.ip, "after");
        assert!(after < 20.0, "round trip {after} ms after healing");
    });
}

#[test]
fn jitter_widens_the_spread() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        let taps = [b.tap.clone()];
        let mut shaper = queue_shaper(&host, "hearth-tj");
        let spread = |shaper: &mut Shaper, jitter_ms| {
            shaper.apply(&taps, &[delay_b(&b, 60, jitter_ms)]).expect("delay b");
            let p = ping(&a.ns, b.ip, 30, "0.05");
            assert!(p.all_answered(), "{p:?}");
            let (avg, mdev) = (p.avg_rtt_ms.expect("avg"), p.mdev_ms.expect("mdev"));
            assert!((50.0..120.0).contains(&avg), "average {avg} ms with 60 ms ± {jitter_ms} ms");
            mdev
        };
        let steady = spread(&mut shaper, 0);
        let jittery = spread(&mut shaper, 30);
        // Uniform on ±30 ms has a mean deviation of 15 ms; a busy host adds
        // a few ms of its own to both.
        assert!(steady < 6.0, "mean deviation {steady} ms without jitter");
        assert!(
            jittery > 6.0 && jittery > 2.0 * steady,
            "mean deviation {jittery} ms with 30 ms of jitter, {steady} ms without"
        );
        shaper.clear().expect("clear");
        assert_nothing_left(&host, "hearth-tj-delay");
    });
}

#[test]
fn traffic_flows_undelayed_while_no_delay_line_listens() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        let mut shaper = queue_shaper(&host, "hearth-tb");
        shaper.apply(std::slice::from_ref(&b.tap), &[delay_b(&b, 100, 0)]).expect("delay b");
        // A daemon that stops leaves its rules; --queue-bypass lets the
        // packets through while nothing holds the queue.
        drop(shaper);
        assert_eq!(delay::chain_state(&host, "hearth-tb-delay").expect("chain state"), (true, true));
        assert_eq!(bound_queues(&host), Vec::<u16>::new());
        let p = ping(&a.ns, b.ip, 5, "0.1");
        assert!(p.all_answered() && p.avg_rtt_ms.is_some_and(|ms| ms < 20.0), "{p:?}");

        // The next daemon's first pass, with no delays, removes them.
        let mut next = queue_shaper(&host, "hearth-tb");
        next.apply(std::slice::from_ref(&b.tap), &[]).expect("first pass");
        assert_eq!(delay::chain_state(&host, "hearth-tb-delay").expect("chain state"), (false, false));
    });
}

#[test]
fn a_mangle_table_in_use_by_someone_else_stays() {
    support::run(|lab| {
        let (host, _a, b) = two_machines(lab);
        for (theirs, check) in [
            (
                vec!["-A", "POSTROUTING", "-o", "lo", "-j", "ACCEPT"],
                vec!["-C", "POSTROUTING", "-o", "lo", "-j", "ACCEPT"],
            ),
            (vec!["-N", "someone-else"], vec!["-S", "someone-else"]),
        ] {
            let iptables =
                |args: &[&str]| sh(&host, &[["iptables", "-w", "-t", "mangle"].as_slice(), args].concat());
            iptables(&theirs);
            let mut shaper = queue_shaper(&host, "hearth-ts");
            shaper.apply(std::slice::from_ref(&b.tap), &[delay_b(&b, 10, 0)]).expect("delay b");
            shaper.clear().expect("heal");
            assert_eq!(delay::chain_state(&host, "hearth-ts-delay").expect("chain state"), (false, false));
            iptables(&check);
            sh(&host, &["nft", "delete", "table", "ip", "mangle"]);
        }
    });
}

#[test]
fn daemons_sharing_a_host_get_their_own_queues_and_chains() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        // Two delay lines asking for the same number: the kernel gives it
        // to one, and the other takes the next.
        let one = DelayLine::start(&host).expect("first line");
        let two = DelayLine::start(&host).expect("second line");
        let shape = Shape::default();
        assert_eq!(one.bind(4000, shape).expect("bind"), 4000);
        assert_eq!(two.bind(4000, shape).expect("bind"), 4001);
        drop((one, two));
        assert_eq!(bound_queues(&host), Vec::<u16>::new());

        // Each daemon has bridges of its own: the second's, with c and d.
        link::ensure_bridge(&host, "hb-r", Ipv4Addr::new(10, 97, 0, 1), 24).expect("second bridge");
        let c = lab.machine("c", &host, "hb-r", "ht-rc", Ipv4Addr::new(10, 97, 0, 10), None);
        let d = lab.machine("d", &host, "hb-r", "ht-rd", Ipv4Addr::new(10, 97, 0, 11), None);
        let (mut first, mut second) = (queue_shaper(&host, "hearth-t1"), queue_shaper(&host, "hearth-t2"));
        first.apply(std::slice::from_ref(&b.tap), &[delay_b(&b, 100, 0)]).expect("first daemon's delay");
        let to_d = TapDelay { tap: d.tap.clone(), bridge: "hb-r".to_owned(), ip: d.ip, ..delay_b(&b, 50, 0) };
        second.apply(std::slice::from_ref(&d.tap), &[to_d]).expect("second daemon's delay");
        let (q1, q2) = (first.queue_of(&b.tap).expect("queue"), second.queue_of(&d.tap).expect("queue"));
        assert_ne!(q1, q2);
        let to_b = rtt(&a.ns, b.ip, "a to b");
        assert!((90.0..200.0).contains(&to_b), "100 ms towards b gave {to_b} ms");
        let to_d = rtt(&c.ns, d.ip, "c to d");
        assert!((45.0..120.0).contains(&to_d), "50 ms towards d gave {to_d} ms");

        // One daemon healing leaves the other's delay alone.
        first.clear().expect("clear the first");
        assert_eq!(delay::chain_state(&host, "hearth-t1-delay").expect("chain state"), (false, false));
        assert_eq!(bound_queues(&host), vec![q2]);
        assert_eq!(bridge_nf_call_iptables(&host), "0");
        assert!(rtt(&a.ns, b.ip, "a to b, healed") < 20.0);
        let to_d = rtt(&c.ns, d.ip, "c to d, still delayed");
        assert!(
            (45.0..120.0).contains(&to_d),
            "50 ms towards d gave {to_d} ms after the other daemon healed"
        );
        second.clear().expect("clear the second");
        assert_eq!(delay::chain_state(&host, "hearth-t2-delay").expect("chain state"), (false, false));
        assert_eq!(bound_queues(&host), Vec::<u16>::new());
    });
}

#[test]
fn bad_delays_are_refused_before_anything_changes() {
    support::run(|lab| {
        let (host, _a, b) = two_machines(lab);
        let mut shaper = queue_shaper(&host, "hearth-tx");
        let check = |shaper: &mut Shaper, delay: TapDelay, expect: &str| {
            let error = shaper.apply(std::slice::from_ref(&b.tap), &[delay]).expect_err(expect);
            assert!(error.to_string().contains(expect), "{error}");
            assert_eq!(error.code(), "invalid_field", "{error}");
        };
        check(&mut shaper, delay_b(&b, 10, 20), "larger than the delay");
        check(&mut shaper, delay_b(&b, 61_000, 0), "longer than 60s");
        let bad_tap = TapDelay { tap: "not a tap".to_owned(), ..delay_b(&b, 10, 0) };
        check(&mut shaper, bad_tap, "not a usable interface name");
        assert!(matches!(
            Shaper::new(host.clone(), "bad name!")
                .with_backend(Backend::Queue)
                .apply(&[], &[delay_b(&b, 10, 0)]),
            Err(Error::Invalid { what: "chain name", .. })
        ));
        assert_nothing_left(&host, "hearth-tx-delay");
        assert_eq!("queue".parse(), Ok(Backend::Queue));
        assert!("tc".parse::<Backend>().unwrap_err().contains("use `netem` or `queue`"));
    });
}

#[test]
fn the_probe_picks_what_the_kernel_can_do() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        let mut shaper = Shaper::new(host.clone(), "hearth-tp");
        // No delay yet: nothing to decide.
        shaper.apply(std::slice::from_ref(&b.tap), &[]).expect("no delays");
        assert_eq!(shaper.backend(), None);
        shaper.apply(std::slice::from_ref(&b.tap), &[delay_b(&b, 100, 0)]).expect("delay b");
        let has_netem = shaping::current(&host, &b.tap).expect("qdisc").is_some();
        let backend = shaper.backend().expect("decided");
        assert_eq!(backend, if has_netem { Backend::Netem } else { Backend::Queue });
        eprintln!("this kernel delays with {backend:?}");
        let delayed = rtt(&a.ns, b.ip, "with delay");
        assert!((90.0..200.0).contains(&delayed), "round trip {delayed} ms with {backend:?}");
        shaper.apply(std::slice::from_ref(&b.tap), &[]).expect("heal");
        assert_nothing_left(&host, "hearth-tp-delay");
        assert!(rtt(&a.ns, b.ip, "after") < 20.0);
    });
}

#[test]
fn a_delay_works_alongside_the_firewall_and_neither_disturbs_the_other() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        let c = lab.machine("c", &host, "hb-q", "ht-qc", Ipv4Addr::new(10, 96, 0, 12), None);
        // hearth's whole ruleset for this network: isolation and NAT (in
        // the inet table, which bridged frames now pass through too), a
        // partition between a and c, and some loss towards c.
        let desired = firewall::Desired {
            table: "hearth-tf".to_owned(),
            networks: vec![firewall::NetworkRules {
                bridge: "hb-q".to_owned(),
                subnet: "10.96.0.0/24".to_owned(),
                nat: true,
            }],
            partitions: vec![firewall::Partition {
                id: "f1".to_owned(),
                from: vec![a.tap.clone()],
                to: vec![c.tap.clone()],
                from_remote: vec![],
                to_remote: vec![],
                both_ways: true,
            }],
            losses: vec![firewall::Loss { tap: c.tap.clone(), percent: 0.01 }],
            overlays: vec![],
            peers: vec![],
        };
        firewall::apply(&host, &desired).expect("firewall");
        let mut shaper = queue_shaper(&host, "hearth-tf");
        let taps = [a.tap.clone(), b.tap.clone(), c.tap.clone()];
        shaper.apply(&taps, &[delay_b(&b, 100, 0)]).expect("delay b");

        let to_b = rtt(&a.ns, b.ip, "a to b");
        assert!((90.0..200.0).contains(&to_b), "a -> b {to_b} ms with 100 ms towards b");
        assert!(ping(&a.ns, c.ip, 2, "0.1").none_answered(), "the partition let a reach c");
        let c_to_b = rtt(&c.ns, b.ip, "c to b");
        assert!((90.0..200.0).contains(&c_to_b), "c -> b {c_to_b} ms with 100 ms towards b");

        // Healing the partition leaves the delay; healing the delay leaves
        // the rest of the ruleset.
        firewall::apply(&host, &firewall::Desired { partitions: vec![], ..desired.clone() }).expect("heal");
        assert!(ping(&a.ns, c.ip, 3, "0.1").all_answered(), "a -> c after healing the partition");
        let to_b = rtt(&a.ns, b.ip, "a to b, partition healed");
        assert!((90.0..200.0).contains(&to_b), "a -> b {to_b} ms after healing the partition");
        shaper.apply(&taps, &[]).expect("heal the delay");
        assert!(rtt(&a.ns, b.ip, "a to b, all healed") < 20.0);
        let tables = sh(&host, &["nft", "list", "tables"]);
        assert!(
            tables.contains("table inet hearth-tf") && tables.contains("table bridge hearth-tf"),
            "{tables}"
        );
        firewall::clear(&host, "hearth-tf").expect("clear the firewall");
        assert_nothing_left(&host, "hearth-tf-delay");
    });
}

#[test]
fn a_burst_far_larger_than_the_kernels_default_queue_is_delayed_without_loss() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        let mut shaper = queue_shaper(&host, "hearth-tl");
        shaper.apply(std::slice::from_ref(&b.tap), &[delay_b(&b, 100, 0)]).expect("delay b");
        // 3000 echo requests sent at once are all in the queue together:
        // three times the kernel's default queue length (1024).
        let count = "3000";
        let out = sh(&a.ns, &["ping", "-n", "-q", "-c", count, "-l", count, "-W", "5", &b.ip.to_string()]);
        assert!(out.contains("3000 packets transmitted, 3000 received"), "{out}");
        // None slipped through undelayed (which is what a full queue does).
        let min: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no round trips: {out}"));
        assert!(min >= 95.0, "the quickest of the burst took {min} ms, under the 100 ms delay: {out}");
        shaper.clear().expect("clear");
        assert_nothing_left(&host, "hearth-tl-delay");
    });
}

#[test]
fn healing_lets_the_packets_held_go_at_once_rather_than_dropping_them() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        let mut shaper = queue_shaper(&host, "hearth-th");
        shaper.apply(std::slice::from_ref(&b.tap), &[delay_b(&b, 2000, 0)]).expect("delay b");
        let queue = shaper.queue_of(&b.tap).expect("b's queue");
        let pinger = std::thread::spawn({
            let (ns, ip) = (a.ns.clone(), b.ip);
            move || ping(&ns, ip, 1, "1")
        });
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(shaper.held().expect("held").get(&queue), Some(&1), "the echo request is held");
        shaper.apply(std::slice::from_ref(&b.tap), &[]).expect("heal");
        let p = pinger.join().expect("ping");
        // ping waits at most a second for its reply (-W 1): an answer at all
        // means the request went on when healed, well before its 2 s.
        assert!(p.all_answered(), "the held request was lost when the delay healed: {p:?}");
        let ms = p.avg_rtt_ms.expect("a round trip");
        assert!((400.0..1000.0).contains(&ms), "released after {ms} ms");
        assert_nothing_left(&host, "hearth-th-delay");
    });
}

/// The kernel drops every packet held in a namespace's queues whenever a
/// netfilter hook there goes away; hearth's firewall passes must not remove
/// any (neither a chain's nor connection tracking's, which goes with the
/// last NAT rule), or each pass would cut the delayed traffic.
#[test]
fn firewall_passes_do_not_drop_the_packets_held() {
    support::run(|lab| {
        let (host, a, b) = two_machines(lab);
        let mut desired = firewall::Desired { table: "hearth-tk".to_owned(), ..Default::default() };
        firewall::apply(&host, &desired).expect("firewall");
        let mut shaper = queue_shaper(&host, "hearth-tk");
        shaper.apply(std::slice::from_ref(&b.tap), &[delay_b(&b, 600, 0)]).expect("delay b");
        let pinger = std::thread::spawn({
            let (ns, ip) = (a.ns.clone(), b.ip);
            move || ping(&ns, ip, 1, "1")
        });
        std::thread::sleep(Duration::from_millis(300));
        // Passes that add and remove networks, partitions and losses.
        desired.networks =
            vec![firewall::NetworkRules { bridge: "hb-q".into(), subnet: "10.96.0.0/24".into(), nat: true }];
        desired.losses = vec![firewall::Loss { tap: a.tap.clone(), percent: 0.01 }];
        firewall::apply(&host, &desired).expect("a pass with more");
        firewall::apply(&host, &firewall::Desired { table: "hearth-tk".to_owned(), ..Default::default() })
            .expect("a pass with less");
        let p = pinger.join().expect("ping");
        assert!(p.all_answered(), "a firewall pass dropped the held echo request: {p:?}");
        assert!(p.avg_rtt_ms.is_some_and(|ms| ms >= 590.0), "{p:?}");
        shaper.clear().expect("clear");
        firewall::clear(&host, "hearth-tk").expect("clear the firewall");
        assert_nothing_left(&host, "hearth-tk-delay");
    });
}
