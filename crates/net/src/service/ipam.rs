//! Address management: one `ipam/NETWORK/IP` key per address, claimed
//! with compare-and-swap so no two machines get one; the taps and bridges
//! a NIC needs, and the kernel command line that tells a guest its
//! addresses.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hearth_store::{Compare, Op, Txn};

use super::{Error, Networks, blocking};
use crate::link;
use crate::record::{self, Nic, Subnet};

impl Networks {
    /// The machines on a network, with their addresses, in address order.
    pub async fn members(&self, network: &str) -> Result<Vec<(String, Ipv4Addr)>, Error> {
        let prefix = format!("{}{network}/", record::IPAM);
        let used = self.inner.store.range(&prefix).await?;
        let mut members: Vec<(String, Ipv4Addr)> = used
            .kvs
            .iter()
            .filter_map(|kv| {
                let ip = kv.key.strip_prefix(&prefix)?.parse().ok()?;
                Some((String::from_utf8_lossy(&kv.value).into_owned(), ip))
            })
            .collect();
        members.sort_by_key(|(_, ip)| u32::from(*ip));
        Ok(members)
    }

    /// Gives `machine` an address on `network`: `requested`, or the lowest
    /// free one. Recorded with compare-and-swap, so no two machines get one.
    pub async fn allocate(
        &self,
        network: &str,
        machine: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Nic, Error> {
        self.check_enabled()?;
        let net = self.get(network).await?;
        let nic = |ip| Nic {
            network: network.into(),
            ip,
            mac: record::mac_for(machine, network),
            tap: self.tap_name(machine, network),
        };
        if let Some(ip) = requested {
            if !net.subnet.contains(ip)
                || ip == net.subnet.gateway()
                || ip == net.subnet.broadcast()
                || ip == net.subnet.network
            {
                return Err(Error::OutOfSubnet { ip, network: network.into(), subnet: net.subnet });
            }
            return if self.claim(network, ip, machine).await? {
                Ok(nic(ip))
            } else {
                let holder = self.holder(network, ip).await?.unwrap_or_default();
                Err(Error::Taken { ip, network: network.into(), holder })
            };
        }
        for ip in net.subnet.machine_addresses() {
            if self.claim(network, ip, machine).await? {
                return Ok(nic(ip));
            }
        }
        Err(Error::Full(network.into()))
    }

    async fn claim(&self, network: &str, ip: Ipv4Addr, machine: &str) -> Result<bool, Error> {
        let key = record::ipam_key(network, ip);
        let txn = Txn::new().when(Compare::missing(&key)).and_then(Op::Put {
            key,
            value: machine.as_bytes().to_vec(),
            lease: None,
        });
        Ok(self.writes().txn(txn).await?.succeeded)
    }

    async fn holder(&self, network: &str, ip: Ipv4Addr) -> Result<Option<String>, Error> {
        Ok(self
            .inner
            .store
            .get(&record::ipam_key(network, ip))
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Gives an address back.
    pub async fn release(&self, nic: &Nic) -> Result<(), Error> {
        self.writes().delete(&record::ipam_key(&nic.network, nic.ip)).await?;
        Ok(())
    }

    /// Deletes the NICs' taps from this host, and nothing in the store: for
    /// the host that ran a machine whose record another host removed (and
    /// whose addresses that host released).
    pub async fn unplug(&self, nics: &[Nic]) -> Result<(), Error> {
        for nic in nics {
            let tap = nic.tap.clone();
            blocking(move || link::delete_link(&link::Netns::Host, &tap).map_err(Error::from)).await?;
        }
        if !nics.is_empty() {
            self.inner.dirty.notify_one();
        }
        Ok(())
    }

    /// Makes the NIC's bridge and tap exist (before its VM starts).
    pub async fn prepare(&self, nic: &Nic) -> Result<(), Error> {
        let net = self.get(&nic.network).await?;
        let (bridge, tap) = (net.bridge.clone(), nic.tap.clone());
        blocking(move || {
            link::ensure_bridge(&link::Netns::Host, &bridge, net.subnet.gateway(), net.subnet.prefix)?;
            link::ensure_tap(&link::Netns::Host, &tap, &bridge)?;
            Ok(())
        })
        .await?;
        self.inner.dirty.notify_one();
        Ok(())
    }

    /// Removes the NICs' taps and addresses, and every fault that names the
    /// machine (a machine's removal takes its faults with it).
    pub async fn forget(&self, machine: &str, nics: &[Nic]) -> Result<(), Error> {
        for nic in nics {
            self.unplug(std::slice::from_ref(nic)).await?;
            self.release(nic).await?;
        }
        for fault in self.faults().await? {
            if fault.kind.machines().contains(&machine) {
                self.writes().delete(&record::fault_key(&fault.id)).await?;
            }
        }
        self.inner.dirty.notify_one();
        Ok(())
    }

    /// The kernel command line a guest needs for its NICs and names.
    pub fn guest_cmdline(&self, machine: &str, nics: &[Nic], subnets: &HashMap<String, Subnet>) -> String {
        let mut out = String::new();
        let mut gateway_set = false;
        let mut dns = Vec::new();
        let mut search = Vec::new();
        for nic in nics {
            let Some(subnet) = subnets.get(&nic.network) else { continue };
            out.push_str(&format!(" hearth.net={},{}/{}", nic.mac, nic.ip, subnet.prefix));
            if !gateway_set {
                out.push_str(&format!(",{}", subnet.gateway()));
                gateway_set = true;
            }
            dns.push(subnet.gateway().to_string());
            search.push(format!("{}.hearth", nic.network));
        }
        if !dns.is_empty() {
            out.push_str(&format!(" hearth.dns={} hearth.search={}", dns.join(","), search.join(",")));
        }
        let _ = machine;
        out
    }
}
