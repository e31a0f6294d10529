//! A connection's places under its listener's caps: one of `max_connections`, one under its
//! client address's `max_connections_per_ip` (an IPv6 client counted by its /64), and its
//! place in the open-connections gauge, all given back when it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::telemetry::metrics::ConnectionMetrics;

/// Connections open per client address, capped.
pub(super) struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place under its address's cap, given back when dropped.
pub(super) struct AddressSlot {
    addresses: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    /// At most `limit` connections from one address.
    pub(super) fn new(limit: usize) -> PerAddress {
        PerAddress { limit, open: Mutex::default() }
    }

    /// A place for one more connection from `address`, unless it has as many as allowed.
    pub(super) fn enter(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let key = address_key(address);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot { addresses: self.clone(), key })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.addresses.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The key connections are counted under: an IPv4 address (or an IPv4-mapped one) as it is,
/// an IPv6 address by its /64, which one client usually holds whole.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// A connection's slot under `max_connections` and under its address's cap, and its place in
/// the open-connections gauge, all given back when the connection ends.
pub(super) struct OpenConnection {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _address: AddressSlot,
    pub(super) metrics: Arc<ConnectionMetrics>,
}

impl OpenConnection {
    pub(super) fn new(
        slot: tokio::sync::OwnedSemaphorePermit,
        address: AddressSlot,
        metrics: Arc<ConnectionMetrics>,
    ) -> OpenConnection {
        metrics.open.inc();
        OpenConnection { _slot: slot, _address: address, metrics }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_by_ipv4_address_and_ipv6_slash_64() {
        let v6 = |text: &str| address_key(text.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2:bbbb::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), v6("10.0.0.1"));
        let addresses = Arc::new(PerAddress { limit: 2, open: Mutex::default() });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (a, _b) = (addresses.enter(ip).unwrap(), addresses.enter(ip).unwrap());
        assert!(addresses.enter(ip).is_none(), "the third from one address");
        assert!(addresses.enter("10.0.0.2".parse().unwrap()).is_some(), "another address");
        drop(a);
        assert!(addresses.enter(ip).is_some(), "a closed connection gives its place back");
    }
}
