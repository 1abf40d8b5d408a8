//! Delay and jitter on a tap: tc netem where the kernel has it, hearth's
//! own delay line ([`delay`](crate::delay), NFQUEUE) where it has not.
//!
//! Either way what is shaped is the tap's egress, the traffic travelling
//! towards the guest: a host can only queue what it sends, and everything a
//! guest receives is sent by its tap. Faults on a machine therefore affect
//! what it receives; its replies go out unshaped through the other
//! machine's tap (which is shaped too if that machine is faulted).
//!
//! [`apply`] and [`current`] are netem on one tap. A [`Shaper`] is what the
//! daemon uses: it decides once, with a probe, which of the two this kernel
//! can do, and then keeps every tap's delay as desired.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::cmd::{Cmd, check_ifname, stderr};
pub use crate::cmd::{Error, Netns};
use crate::delay::{self, DelayLine, Shape};

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

/// How a [`Shaper`] delays packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `tc netem` on the tap.
    Netem,
    /// The NFQUEUE delay line in the daemon.
    Queue,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "netem" => Ok(Backend::Netem),
            "queue" => Ok(Backend::Queue),
            _ => Err(format!("{s:?} is not a delay backend: use `netem` or `queue`")),
        }
    }
}

/// The delay one tap should have.
#[derive(Debug, Clone, PartialEq)]
pub struct TapDelay {
    pub tap: String,
    /// The bridge the tap is a port of.
    pub bridge: String,
    /// The guest's address behind the tap: what the host sends there is
    /// delayed too.
    pub ip: Ipv4Addr,
    pub shape: Shape,
}

/// The longest delay, or jitter, a shaper accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Keeps the delays of a namespace's taps as desired, with netem or with
/// the delay line, whichever the kernel can do.
#[derive(Debug)]
pub struct Shaper {
    ns: Netns,
    /// This daemon's own name for what it puts on the host (its firewall
    /// table's name): it names the iptables chain and picks queue numbers,
    /// so daemons sharing a host never meet.
    name: String,
    backend: Option<Backend>,
    line: Option<DelayLine>,
    /// The queue of each tap the delay line delays.
    queues: BTreeMap<String, u16>,
    /// Bridges whose `nf_call_iptables` this shaper turned on.
    flagged: BTreeSet<String>,
    /// Whether the host is known to hold none of this shaper's rules.
    clean: bool,
}

impl Shaper {
    /// A shaper for `ns`. `name` is this daemon's own (its firewall
    /// tables'): with `-delay` after it, it names the iptables chain, so it
    /// must be a letter and then at most 21 letters, digits, `-` or `_`.
    pub fn new(ns: Netns, name: &str) -> Self {
        Shaper {
            ns,
            name: name.to_owned(),
            backend: None,
            line: None,
            queues: BTreeMap::new(),
            flagged: BTreeSet::new(),
            clean: false,
        }
    }

    /// Uses `backend` without probing (tests, and `HEARTH_DELAY_BACKEND`).
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The backend in use: `None` until the first delay needed a probe.
    pub fn backend(&self) -> Option<Backend> {
        self.backend
    }

    /// The iptables chain (in the `mangle` table) holding the queue rules.
    pub fn chain(&self) -> String {
        format!("{}-delay", self.name)
    }

    /// The queue delaying `tap`'s traffic, if the delay line delays it.
    pub fn queue_of(&self, tap: &str) -> Option<u16> {
        self.queues.get(tap).copied()
    }

    /// How many packets the delay line holds right now, by queue.
    pub fn held(&self) -> Result<HashMap<u16, usize>, Error> {
        self.line.as_ref().map_or_else(|| Ok(HashMap::new()), DelayLine::held)
    }

    /// Gives every tap in `delays` its delay, and takes it from every other
    /// tap. `taps` are the taps that exist (netem can only shape those; the
    /// queue's rules match by name, so a tap may come later).
    pub fn apply(&mut self, taps: &[String], delays: &[TapDelay]) -> Result<(), Error> {
        for d in delays {
            check_ifname(&d.tap)?;
            check_ifname(&d.bridge)?;
            check_shape(&d.shape)?;
        }
        let backend = match self.backend {
            Some(backend) => backend,
            None => match self.probe(taps, delays)? {
                Some(backend) => backend,
                // No delay yet, or none on a tap that exists: nothing to
                // decide, and nothing to shape; rules left by an earlier
                // daemon go.
                None => {
                    self.clear_stale();
                    return Ok(());
                }
            },
        };
        match backend {
            Backend::Netem => {
                for tap in taps {
                    let netem = delays.iter().find(|d| d.tap == *tap).map(|d| Netem {
                        delay: d.shape.delay,
                        jitter: d.shape.jitter,
                        loss_percent: 0.0,
                    });
                    // A tap that cannot be un-shaped is not worth failing
                    // the pass for; one that cannot be delayed is.
                    if let Err(error) = apply(&self.ns, tap, netem.as_ref())
                        && netem.is_some()
                    {
                        return Err(error);
                    }
                }
                // Rules a queue-backed daemon left under this name.
                self.clear_stale();
                Ok(())
            }
            Backend::Queue => self.apply_queue(delays),
        }
    }

    /// Removes everything this shaper put on the host for the delay line:
    /// its rules, its queues, its bridges' netfilter flags. (Netem qdiscs go
    /// with their taps.)
    pub fn clear(&mut self) -> Result<(), Error> {
        self.clean = false;
        self.clear_queue()
    }

    /// Decides the backend with the first delayed tap that exists: netem if
    /// the kernel takes a netem qdisc there (which is then the delay it
    /// needs anyway), the queue if the kernel has no netem.
    fn probe(&mut self, taps: &[String], delays: &[TapDelay]) -> Result<Option<Backend>, Error> {
        let Some(first) = delays.iter().find(|d| taps.contains(&d.tap)) else { return Ok(None) };
        let netem = Netem { delay: first.shape.delay, jitter: first.shape.jitter, loss_percent: 0.0 };
        let backend = match apply(&self.ns, &first.tap, Some(&netem)) {
            Ok(()) => Backend::Netem,
            Err(Error::NetemUnsupported { .. }) => Backend::Queue,
            Err(error) => return Err(error),
        };
        tracing::info!(
            ?backend,
            "Delays use {}.",
            match backend {
                Backend::Netem => "tc netem",
                Backend::Queue => "the NFQUEUE delay line, since this kernel has no netem",
            }
        );
        self.backend = Some(backend);
        Ok(Some(backend))
    }

    fn apply_queue(&mut self, delays: &[TapDelay]) -> Result<(), Error> {
        if delays.is_empty() {
            return self.clear_queue();
        }
        let chain = self.chain();
        if self.line.as_ref().is_some_and(|line| !line.is_running()) {
            // Its thread stopped (the log says why); the kernel took its
            // queues back. Start again with new ones.
            self.line = None;
            self.queues.clear();
        }
        if self.line.is_none() {
            self.line = Some(DelayLine::start(&self.ns)?);
        }
        let Some(line) = &self.line else { return Ok(()) };
        let mut next =
            self.queues.values().max().map_or_else(|| first_queue(&self.name), |q| q.wrapping_add(1));
        for d in delays {
            match self.queues.get(&d.tap) {
                Some(&queue) => line.set(queue, d.shape)?,
                None => {
                    let queue = line.bind(next, d.shape)?;
                    next = queue.wrapping_add(1);
                    self.queues.insert(d.tap.clone(), queue);
                }
            }
        }
        let targets: Vec<delay::Target> = delays
            .iter()
            .filter_map(|d| {
                let queue = *self.queues.get(&d.tap)?;
                Some(delay::Target { tap: d.tap.clone(), bridge: d.bridge.clone(), ip: d.ip, queue })
            })
            .collect();
        self.clean = false;
        delay::apply_rules(&self.ns, &chain, &targets)?;

        let bridges: BTreeSet<String> = delays.iter().map(|d| d.bridge.clone()).collect();
        for bridge in &bridges {
            delay::set_bridge_netfilter(&self.ns, bridge, true)?;
        }
        for bridge in self.flagged.difference(&bridges) {
            delay::set_bridge_netfilter(&self.ns, bridge, false)?;
        }
        self.flagged = bridges;

        // Taps no longer delayed: their rules are gone, so their queues
        // receive nothing more; what they hold goes now.
        let gone: Vec<(String, u16)> = self
            .queues
            .iter()
            .filter(|(tap, _)| !delays.iter().any(|d| d.tap == **tap))
            .map(|(tap, queue)| (tap.clone(), *queue))
            .collect();
        for (tap, queue) in gone {
            line.unbind(queue)?;
            self.queues.remove(&tap);
        }
        Ok(())
    }

    /// Removes what an earlier daemon of this name may have left, once. A
    /// host where that cannot even be checked (no iptables that works) has
    /// nothing of ours to remove, and its networks without delays must not
    /// fail for it: the failure is logged, not returned.
    fn clear_stale(&mut self) {
        if let Err(error) = self.clear_queue() {
            tracing::warn!(error = %error, "Cannot check for delay rules left by an earlier daemon.");
            self.clean = true;
        }
    }

    fn clear_queue(&mut self) -> Result<(), Error> {
        if self.clean {
            return Ok(());
        }
        match delay::apply_rules(&self.ns, &self.chain(), &[]) {
            // Without iptables there are no rules to remove.
            Ok(()) | Err(Error::Spawn { .. }) => {}
            Err(error) => return Err(error),
        }
        // Dropping the line lets its packets go and unbinds its queues;
        // only then may the hooks they were queued from go.
        self.line = None;
        self.queues.clear();
        for bridge in std::mem::take(&mut self.flagged) {
            delay::set_bridge_netfilter(&self.ns, &bridge, false)?;
        }
        match delay::remove_mangle_if_empty(&self.ns) {
            Ok(_) => {}
            // Without nfnetlink there is no table to remove.
            Err(Error::DelayUnsupported { .. }) => {}
            Err(error) => return Err(error),
        }
        self.clean = true;
        Ok(())
    }
}

/// Where this shaper's queue numbers start: spread by name over the upper
/// half of the range, so daemons rarely even try each other's.
fn first_queue(name: &str) -> u16 {
    0x8000 | (crate::link::fnv1a(name.as_bytes()) & 0x7f00) as u16
}

fn check_shape(shape: &Shape) -> Result<(), Error> {
    if shape.delay > MAX_DELAY || shape.jitter > MAX_DELAY {
        return Err(Error::Invalid {
            what: "delay",
            reason: format!("{:?} ± {:?} is longer than {MAX_DELAY:?}", shape.delay, shape.jitter),
        });
    }
    if shape.jitter > shape.delay {
        return Err(Error::Invalid {
            what: "jitter",
            reason: format!("{:?} is larger than the delay, {:?}", shape.jitter, shape.delay),
        });
    }
    Ok(())
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
