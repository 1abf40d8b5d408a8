//! Delay, jitter and loss on a tap, with tc netem.
//!
//! The qdisc goes on the tap's egress, which is the traffic travelling
//! towards the guest: a host can only queue what it sends, and everything a
//! guest receives is sent by its tap. Faults on a machine therefore affect
//! what it receives; its replies go out unshaped through the other
//! machine's tap (which has its own netem if that machine is faulted too).

use std::time::Duration;

use crate::cmd::{Cmd, check_ifname, stderr};
pub use crate::cmd::{Error, Netns};

/// What netem does to each packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Netem {
    pub delay: Duration,
    /// Each packet's delay varies uniformly by up to this much either way.
    pub jitter: Duration,
    /// 0 to 100.
    pub loss_percent: f32,
}

/// netem's queue length, in packets. Its default (1000) tail-drops at about
/// 120 Mbit/s of full-size frames under 100 ms of delay, which would show up
/// as loss nobody asked for.
const LIMIT: u32 = 10_000;

/// Sets `tap`'s root qdisc to `netem`, replacing whatever was there, or
/// removes hearth's qdisc when `netem` is `None`. Removing when there is
/// nothing to remove, or no tap any more, succeeds: either way the tap is
/// not shaped.
pub fn apply(ns: &Netns, tap: &str, netem: Option<&Netem>) -> Result<(), Error> {
    check_ifname(tap)?;
    let Some(netem) = netem else {
        return remove(ns, tap);
    };
    let cmd =
        Cmd::new(ns, "tc").args(["qdisc", "replace", "dev", tap, "root", "netem"]).args(netem_args(netem)?);
    let output = cmd.output(None)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = stderr(&output);
    if stderr.contains("qdisc kind is unknown") {
        return Err(Error::NetemUnsupported {
            command: cmd.display(),
            stderr,
            hint: "this kernel has no netem: load it with `modprobe sch_netem` (Debian ships it in the \
                   linux-image package; minimal kernels need CONFIG_NET_SCH_NETEM)"
                .to_owned(),
        });
    }
    Err(cmd.failed(&output))
}

/// The tap's root qdisc line as `tc qdisc show` prints it, if it is a netem
/// (hearth's); `None` for the kernel's default qdisc.
pub fn current(ns: &Netns, tap: &str) -> Result<Option<String>, Error> {
    check_ifname(tap)?;
    let out = Cmd::new(ns, "tc").args(["qdisc", "show", "dev", tap, "root"]).run()?;
    Ok(out.lines().find(|l| l.starts_with("qdisc netem ")).map(|l| l.trim_end().to_owned()))
}

fn remove(ns: &Netns, tap: &str) -> Result<(), Error> {
    if current(ns, tap).or_else(|e| if is_no_device(&e) { Ok(None) } else { Err(e) })?.is_none() {
        return Ok(());
    }
    let cmd = Cmd::new(ns, "tc").args(["qdisc", "del", "dev", tap, "root"]);
    let output = cmd.output(None)?;
    let stderr = stderr(&output);
    // The qdisc, or the tap, may have gone since we looked.
    if output.status.success() || stderr.contains("Cannot find device") || stderr.contains("handle of zero") {
        return Ok(());
    }
    Err(cmd.failed(&output))
}

fn is_no_device(error: &Error) -> bool {
    matches!(error, Error::Failed { stderr, .. } if stderr.contains("Cannot find device"))
}

/// The arguments after `netem`, in microseconds so nothing is rounded.
fn netem_args(netem: &Netem) -> Result<Vec<String>, Error> {
    let loss = netem.loss_percent;
    if !(0.0..=100.0).contains(&loss) {
        return Err(Error::Invalid { what: "loss", reason: format!("{loss}% is not between 0% and 100%") });
    }
    let mut args = vec!["limit".to_owned(), LIMIT.to_string()];
    args.extend(["delay".to_owned(), format!("{}us", netem.delay.as_micros())]);
    if !netem.jitter.is_zero() {
        args.push(format!("{}us", netem.jitter.as_micros()));
    }
    if loss > 0.0 {
        args.extend(["loss".to_owned(), format!("{loss}%")]);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(delay_ms: u64, jitter_ms: u64, loss: f32, expect: &str) {
        let netem = Netem {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss_percent: loss,
        };
        assert_eq!(netem_args(&netem).unwrap().join(" "), expect);
    }

    #[test]
    fn netem_arguments() {
        check(100, 0, 0.0, "limit 10000 delay 100000us");
        check(100, 10, 0.0, "limit 10000 delay 100000us 10000us");
        check(0, 0, 50.0, "limit 10000 delay 0us loss 50%");
        check(20, 5, 0.5, "limit 10000 delay 20000us 5000us loss 0.5%");
    }

    #[test]
    fn loss_outside_0_to_100_is_refused() {
        for loss in [-1.0, 100.5, f32::NAN] {
            let netem = Netem { delay: Duration::ZERO, jitter: Duration::ZERO, loss_percent: loss };
            assert!(matches!(netem_args(&netem), Err(Error::Invalid { .. })), "{loss}");
        }
    }
}
