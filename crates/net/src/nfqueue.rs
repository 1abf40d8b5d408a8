//! The few nfnetlink_queue messages the delay line needs, encoded and
//! decoded by hand (`linux/netfilter/nfnetlink_queue.h`): bind a queue in
//! metadata-only mode, read which packets arrived, and accept them by id.
//!
//! Netlink headers are in host byte order; nfnetlink's `res_id` and the
//! queue attributes are big-endian. Everything here works on byte slices,
//! so a malformed message from the kernel is an error, never a panic.

/// `NETLINK_NETFILTER`'s subsystem for queues, in the high byte of a
/// message type.
const SUBSYS_QUEUE: u16 = 3;
const MSG_PACKET: u16 = 0;
const MSG_VERDICT: u16 = 1;
const MSG_CONFIG: u16 = 2;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

// Attributes of a packet message, and of a verdict.
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;

// Attributes of a config message.
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;

const CMD_BIND: u8 = 1;
const CMD_UNBIND: u8 = 2;
/// Copy the packet's metadata (its id, interfaces) but none of its bytes.
const COPY_META: u8 = 1;
/// Accept rather than drop what does not fit in the queue (or in our
/// socket's buffer): overload shows as less delay, never as loss.
pub(crate) const F_FAIL_OPEN: u32 = 1;
/// Queue segmentation-offloaded packets whole: we never read payloads, so
/// there is no reason to have the kernel split them.
pub(crate) const F_GSO: u32 = 4;

/// `NF_ACCEPT`.
const VERDICT_ACCEPT: u32 = 1;

/// Appends one netlink message to `out`.
struct Message<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Message<'a> {
    fn new(out: &'a mut Vec<u8>, kind: u16, flags: u16, seq: u32, queue: u16) -> Self {
        // nfgenmsg: family AF_UNSPEC, the queue number.
        Self::nfnetlink(out, (SUBSYS_QUEUE << 8) | kind, flags, seq, 0, queue)
    }

    /// Any nfnetlink message: `kind` is subsystem and message type.
    fn nfnetlink(out: &'a mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let start = out.len();
        out.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // nfgenmsg: family, version 0, resource id.
        out.extend_from_slice(&[family, 0]);
        out.extend_from_slice(&res_id.to_be_bytes());
        Message { out, start }
    }

    fn attr(self, kind: u16, payload: &[u8]) -> Self {
        let len = 4 + payload.len();
        // Attribute lengths fit in u16: ours are a few bytes.
        self.out.extend_from_slice(&(len as u16).to_ne_bytes());
        self.out.extend_from_slice(&kind.to_ne_bytes());
        self.out.extend_from_slice(payload);
        self.out.resize(self.out.len() + align(len) - len, 0);
        self
    }

    fn finish(self) {
        let len = (self.out.len() - self.start) as u32;
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Binds `queue` to this socket in metadata-only mode, at most `max_len`
/// packets queued, with `flags` set; the kernel acknowledges with `seq`.
pub(crate) fn bind(out: &mut Vec<u8>, seq: u32, queue: u16, max_len: u32, flags: u32) {
    let mut params = [0u8; 5];
    params[4] = COPY_META; // copy range 0: nothing of the payload
    Message::new(out, MSG_CONFIG, NLM_F_ACK, seq, queue)
        .attr(NFQA_CFG_CMD, &[CMD_BIND, 0, 0, 0])
        .attr(NFQA_CFG_PARAMS, &params)
        .attr(NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes())
        .attr(NFQA_CFG_MASK, &flags.to_be_bytes())
        .attr(NFQA_CFG_FLAGS, &flags.to_be_bytes())
        .finish();
}

/// Unbinds `queue`. The kernel drops what is still queued in it, so accept
/// everything first.
pub(crate) fn unbind(out: &mut Vec<u8>, seq: u32, queue: u16) {
    Message::new(out, MSG_CONFIG, NLM_F_ACK, seq, queue).attr(NFQA_CFG_CMD, &[CMD_UNBIND, 0, 0, 0]).finish();
}

/// Accepts packet `id` of `queue`. Unacknowledged: a verdict the kernel
/// refuses comes back as an error with sequence number 0.
pub(crate) fn accept(out: &mut Vec<u8>, queue: u16, id: u32) {
    let mut verdict = [0u8; 8];
    verdict[..4].copy_from_slice(&VERDICT_ACCEPT.to_be_bytes());
    verdict[4..].copy_from_slice(&id.to_be_bytes());
    Message::new(out, MSG_VERDICT, 0, 0, queue).attr(NFQA_VERDICT_HDR, &verdict).finish();
}

const SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
/// Delete only what is empty: a chain with no rules, a table with no chains.
const NLM_F_NONREC: u16 = 0x100;
const NFPROTO_IPV4: u8 = 2;

/// One nftables transaction that deletes `table ip TABLE` if, and only if,
/// its one chain is `chain` and that chain is empty: what iptables leaves
/// behind once the last rule in it is gone. Anything else in the table makes
/// the kernel refuse (EBUSY) and the whole transaction does nothing. The
/// two deletions are acknowledged with `seq + 1` and `seq + 2`.
pub(crate) fn delete_table_if_empty(out: &mut Vec<u8>, seq: u32, table: &str, chain: &str) {
    let name = |s: &str| [s.as_bytes(), &[0]].concat();
    let batch = |out: &mut Vec<u8>, kind, seq| {
        Message::nfnetlink(out, kind, 0, seq, 0, SUBSYS_NFTABLES).finish();
    };
    let nft = |kind: u16| (SUBSYS_NFTABLES << 8) | kind;
    batch(out, NFNL_MSG_BATCH_BEGIN, seq);
    Message::nfnetlink(out, nft(NFT_MSG_DELCHAIN), NLM_F_ACK | NLM_F_NONREC, seq + 1, NFPROTO_IPV4, 0)
        .attr(NFTA_CHAIN_TABLE, &name(table))
        .attr(NFTA_CHAIN_NAME, &name(chain))
        .finish();
    Message::nfnetlink(out, nft(NFT_MSG_DELTABLE), NLM_F_ACK | NLM_F_NONREC, seq + 2, NFPROTO_IPV4, 0)
        .attr(NFTA_TABLE_NAME, &name(table))
        .finish();
    batch(out, NFNL_MSG_BATCH_END, seq + 3);
}

/// One message from the kernel, as far as the delay line cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Packet `id` waits in `queue` for a verdict.
    Packet { queue: u16, id: u32 },
    /// The answer to request `seq`: 0 for success, else an errno.
    Ack { seq: u32, errno: i32 },
}

/// Why a datagram from the kernel could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed nfnetlink_queue message: {0}")]
pub(crate) struct Malformed(&'static str);

/// The events in one datagram; other messages are skipped.
pub(crate) fn parse(mut datagram: &[u8]) -> Result<Vec<Event>, Malformed> {
    let mut events = Vec::new();
    while datagram.len() >= NLMSG_HDRLEN {
        let len = u32_ne(datagram, 0)? as usize;
        if len < NLMSG_HDRLEN || len > datagram.len() {
            return Err(Malformed("a message length runs past the datagram"));
        }
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        let seq = u32_ne(datagram, 8)?;
        let body = &datagram[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_ERROR => {
                let errno = i32::from_ne_bytes(array(body, 0)?);
                events.push(Event::Ack { seq, errno: -errno });
            }
            NLMSG_DONE => {}
            k if k == (SUBSYS_QUEUE << 8) | MSG_PACKET => events.push(packet(body)?),
            _ => {}
        }
        datagram = datagram.get(align(len)..).unwrap_or_default();
    }
    Ok(events)
}

fn packet(body: &[u8]) -> Result<Event, Malformed> {
    let queue = u16::from_be_bytes(array(body, 2)?);
    let mut attrs = body.get(NFGENMSG_LEN..).ok_or(Malformed("a packet message is too short"))?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        // The top two bits are flags (nested, byte order).
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return Err(Malformed("an attribute length runs past the message"));
        }
        if kind == NFQA_PACKET_HDR {
            let id = u32::from_be_bytes(array(&attrs[..len], 4)?);
            return Ok(Event::Packet { queue, id });
        }
        attrs = attrs.get(align(len)..).unwrap_or_default();
    }
    Err(Malformed("a packet message has no packet header"))
}

fn u32_ne(bytes: &[u8], at: usize) -> Result<u32, Malformed> {
    Ok(u32::from_ne_bytes(array(bytes, at)?))
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], Malformed> {
    bytes
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or(Malformed("a field runs past the end of its message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel sends it: header, nfgenmsg, and a
    /// packet header attribute (7 bytes, padded) after another attribute.
    fn packet_message(seq: u32, queue: u16, id: u32) -> Vec<u8> {
        let mut m = Vec::new();
        let body_len = NFGENMSG_LEN + 8 + 12;
        m.extend_from_slice(&((NLMSG_HDRLEN + body_len) as u32).to_ne_bytes());
        m.extend_from_slice(&(SUBSYS_QUEUE << 8).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&queue.to_be_bytes());
        // NFQA_IFINDEX_OUTDEV = 6, 4 bytes.
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&6u16.to_ne_bytes());
        m.extend_from_slice(&7u32.to_be_bytes());
        m.extend_from_slice(&11u16.to_ne_bytes());
        m.extend_from_slice(&NFQA_PACKET_HDR.to_ne_bytes());
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0x08, 0x00, 4, 0]); // IPv4, hook 4, padding
        m
    }

    #[test]
    fn packets_and_acks_are_read_from_one_datagram() {
        let mut datagram = packet_message(0, 40_000, 17);
        datagram.extend(packet_message(0, 40_001, 18));
        // An error message: errno, then the request's header.
        datagram.extend_from_slice(&((NLMSG_HDRLEN + 4 + 16) as u32).to_ne_bytes());
        datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        datagram.extend_from_slice(&0u16.to_ne_bytes());
        datagram.extend_from_slice(&9u32.to_ne_bytes());
        datagram.extend_from_slice(&0u32.to_ne_bytes());
        datagram.extend_from_slice(&(-1i32).to_ne_bytes());
        datagram.extend_from_slice(&[0; 16]);
        assert_eq!(
            parse(&datagram),
            Ok(vec![
                Event::Packet { queue: 40_000, id: 17 },
                Event::Packet { queue: 40_001, id: 18 },
                Event::Ack { seq: 9, errno: 1 },
            ])
        );
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let whole = packet_message(0, 1, 2);
        for cut in [NLMSG_HDRLEN, NLMSG_HDRLEN + 2, whole.len() - 8, whole.len() - 2] {
            let mut bad = whole[..cut].to_vec();
            bad[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            assert!(parse(&bad).is_err(), "cut at {cut}");
        }
        let mut lying = whole.clone();
        lying[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse(&lying).is_err());
        assert_eq!(parse(&whole[..10]), Ok(vec![]), "less than a header is nothing");
    }

    #[test]
    fn requests_are_laid_out_as_the_kernel_expects() {
        let mut out = Vec::new();
        accept(&mut out, 0x1234, 0xdead_beef);
        assert_eq!(out.len(), 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(out[..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes([out[4], out[5]]), (3 << 8) | 1);
        assert_eq!(&out[18..20], &[0x12, 0x34]);
        assert_eq!(&out[24..32], &[0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);

        out.clear();
        bind(&mut out, 5, 7, 10_000, F_FAIL_OPEN | F_GSO);
        // Five attributes: cmd (8), params (9, padded to 12), three u32s (8 each).
        assert_eq!(out.len(), 16 + 4 + 8 + 12 + 8 * 3);
        assert_eq!(u16::from_ne_bytes([out[6], out[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes(out[8..12].try_into().unwrap()), 5);
        // The params attribute: length 9, copy range 0, metadata only.
        assert_eq!(&out[28..37], &[9, 0, 2, 0, 0, 0, 0, 0, COPY_META]);
    }
}
