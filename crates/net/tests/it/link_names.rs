//! `link::iface_name`: short names pass through, long or unusual ones are
//! shortened with a stable hash, and every result is a valid interface name.

use hearth_net::link::{IFNAME_MAX, iface_name};

/// One case: `prefix` and `name` give `expect`.
#[track_caller]
fn check(prefix: &str, name: &str, expect: &str) {
    let got = iface_name(prefix, name);
    assert_eq!(got, expect, "iface_name({prefix:?}, {name:?})");
    assert!(got.len() <= IFNAME_MAX, "{got:?} is longer than {IFNAME_MAX} bytes");
    assert!(got.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-')), "{got:?} has a bad byte");
}

#[test]
fn short_clean_names_pass_through() {
    check("hb-", "default", "hb-default");
    check("ht-", "web-1", "ht-web-1");
    check("hb-", "abcdefghijkl", "hb-abcdefghijkl"); // exactly 15 bytes
    check("", "eth0", "eth0");
}

#[test]
fn long_names_keep_their_start_and_gain_a_hash() {
    check("hb-", "abcdefghijklm", "hb-abcde-8356e8"); // 16 bytes: one too many
    check("ht-", "etcd-node-1-backend", "ht-etcd--fee2ad");
    check("ht-", "etcd-node-2-backend", "ht-etcd--53704c");
}

#[test]
fn names_with_other_characters_are_lowercased_dashed_and_hashed() {
    // Hashed even though short: "Web" and "web" must not share a tap.
    // (The hashes are FNV-1a of the name, cross-checked with Python.)
    check("ht-", "Web", "ht-web-645431");
    check("ht-", "web", "ht-web");
    check("ht-", "a_b", "ht-a-b-a46871");
    check("ht-", "a.b", "ht-a-b-8bf50c");
    check("ht-", "café", "ht-caf--2b5049");
}

#[test]
fn long_prefixes_are_cut_so_the_hash_fits() {
    check("hearth-bridge-", "x", "hearth-bx");
    check("hearth-bridge-", "a-long-network", "hearth-b-a6b706");
    check("HB_", "x", "hb-x");
}

#[test]
fn the_same_input_always_gives_the_same_name() {
    let names: Vec<String> = (0..3).map(|_| iface_name("ht-", "a-rather-long-machine-name")).collect();
    assert!(names.windows(2).all(|w| w[0] == w[1]), "{names:?}");
}

#[test]
fn long_names_that_share_a_start_stay_distinct() {
    let names: std::collections::BTreeSet<String> =
        (0..200).map(|i| iface_name("ht-", &format!("machine-number-{i}-on-network"))).collect();
    assert_eq!(names.len(), 200);
}
