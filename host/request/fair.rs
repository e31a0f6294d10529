//! Weighted fair queueing between tenants: a queue that one tenant's flood cannot take over.
//!
//! Each tenant queued has its own lanes, by priority; its priorities order only its own
//! requests. Between tenants, turns go by virtual time (start-time fair queueing): a tenant's
//! next turn starts where its last one finished, or now if it was idle (idle time earns no
//! credit), and a turn lasts `cost / weight`. The next item served is the best of the tenant
//! whose turn starts first. So backlogged tenants share service in proportion to their
//! weights whatever each sends, and a tenant that sends little is served at once.
//!
//! A full queue makes room by push-out: an arrival from a tenant holding less than its share
//! of the places displaces the newest, lowest-priority item of the tenant holding most
//! (weighted), instead of being refused itself.

use std::collections::{BTreeMap, VecDeque};

use crate::request::Priority;
use crate::request::tenant::Tenant;

/// Items queued by tenant, served fairly between tenants and by priority within each.
pub struct FairQueue<T> {
    /// Every tenant that has queued here, by tenant index (kept while idle: its last finish
    /// tag stops it from turning idle time into credit).
    tenants: BTreeMap<usize, Backlog<T>>,
    /// Virtual time: how far service has got.
    now: f64,
    len: usize,
}

/// One tenant's items and turns.
struct Backlog<T> {
    weight: f64,
    /// Queued items by priority (high first), oldest first in each.
    lanes: [VecDeque<Entry<T>>; Priority::LEVELS],
    /// Where the tenant's next turn starts (its last turn's finish).
    next_start: f64,
}

struct Entry<T> {
    item: T,
    cost: f64,
}

/// Where a queued item is, as [`FairQueue::in_turn_order`] gives it, to take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    tenant: usize,
    lane: usize,
    position: usize,
}

/// A queued item in turn order: where it is, and when its turn would start.
pub struct Turn<'a, T> {
    pub place: Place,
    pub start: f64,
    pub item: &'a T,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue { tenants: BTreeMap::new(), now: 0.0, len: 0 }
    }
}

impl<T> Backlog<T> {
    fn queued(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// The item its next turn serves: the oldest of its highest priority.
    fn best_lane(&self) -> Option<usize> {
        self.lanes.iter().position(|lane| !lane.is_empty())
    }
}

impl<T> FairQueue<T> {
    /// Items queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items queued for the tenant of index `tenant`.
    pub fn queued_for(&self, tenant: usize) -> usize {
        self.tenants.get(&tenant).map_or(0, Backlog::queued)
    }

    /// Queues `item` for `tenant` at `priority`; serving it takes `cost` of the tenant's
    /// share (1 per request, or the items of a batch row count).
    pub fn push(&mut self, tenant: &Tenant, priority: Priority, cost: f64, item: T) {
        let now = self.now;
        let backlog = self.backlog(tenant);
        if backlog.queued() == 0 {
            // Idle time earns no credit.
            backlog.next_start = backlog.next_start.max(now);
        }
        backlog.lanes[priority as usize].push_back(Entry { item, cost: cost.max(0.0) });
        self.len += 1;
    }

    /// Counts `cost` of service that `tenant` got without queueing (a free slot taken at once)
    /// against its share, as if its item had been queued and popped.
    pub fn charge(&mut self, tenant: &Tenant, cost: f64) {
        let now = self.now;
        let backlog = self.backlog(tenant);
        let start = backlog.next_start.max(now);
        backlog.next_start = start + cost.max(0.0) / backlog.weight;
        self.now = start;
    }

    /// The tenant's backlog, made empty if it has none, with its weight as configured now.
    fn backlog(&mut self, tenant: &Tenant) -> &mut Backlog<T> {
        let now = self.now;
        let backlog = self.tenants.entry(tenant.index).or_insert_with(|| Backlog {
            weight: 1.0,
            lanes: Default::default(),
            next_start: now,
        });
        backlog.weight = f64::from(tenant.weight.max(1));
        backlog
    }

    /// Takes the next item: the best of the tenant whose turn starts first.
    pub fn pop(&mut self) -> Option<T> {
        let (_, backlog) = self
            .tenants
            .iter_mut()
            .filter(|(_, backlog)| backlog.queued() > 0)
            .min_by(|(_, a), (_, b)| a.next_start.total_cmp(&b.next_start))?;
        let lane = backlog.best_lane().expect("a backlogged tenant has an item");
        let entry = backlog.lanes[lane].pop_front().expect("the lane has an item");
        self.now = self.now.max(backlog.next_start);
        backlog.next_start += entry.cost / backlog.weight;
        self.len -= 1;
        Some(entry.item)
    }

    /// Keeps only the items `keep` says to keep (dropping the others costs their tenants
    /// nothing).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        for backlog in self.tenants.values_mut() {
            for lane in &mut backlog.lanes {
                lane.retain_mut(|entry| keep(&mut entry.item));
            }
        }
        self.len = self.tenants.values().map(Backlog::queued).sum();
    }

    /// Push-out for a full queue: if some other tenant holds more places than `tenant`
    /// would with one more (counted against their weights), removes and returns that
    /// tenant's newest item of its lowest priority, to make room. `None`: `tenant` holds its
    /// share already, and it is the arrival that must be refused.
    pub fn evict_for(&mut self, tenant: &Tenant) -> Option<T> {
        let share = |queued: usize, weight: f64| queued as f64 / weight;
        let arriving = share(self.queued_for(tenant.index) + 1, f64::from(tenant.weight.max(1)));
        let (_, heaviest) = self
            .tenants
            .iter_mut()
            .filter(|(index, backlog)| **index != tenant.index && backlog.queued() > 0)
            .max_by(|(_, a), (_, b)| share(a.queued(), a.weight).total_cmp(&share(b.queued(), b.weight)))?;
        if share(heaviest.queued(), heaviest.weight) <= arriving {
            return None;
        }
        let lane = heaviest.lanes.iter().rposition(|lane| !lane.is_empty())?;
        let entry = heaviest.lanes[lane].pop_back()?;
        self.len -= 1;
        Some(entry.item)
    }

    /// Every queued item in the order it would be served if nothing else arrived, with the
    /// virtual time its turn would start.
    pub fn in_turn_order(&self) -> Vec<Turn<'_, T>> {
        let mut turns = Vec::with_capacity(self.len);
        for (&tenant, backlog) in &self.tenants {
            let mut start = backlog.next_start;
            for (lane, entries) in backlog.lanes.iter().enumerate() {
                for (position, entry) in entries.iter().enumerate() {
                    turns.push(Turn { place: Place { tenant, lane, position }, start, item: &entry.item });
                    start += entry.cost / backlog.weight;
                }
            }
        }
        turns.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.place.cmp(&b.place)));
        turns
    }

    /// Takes the items at `places` (from one [`FairQueue::in_turn_order`], nothing changed
    /// since), in the order given; each costs its tenant a turn, as if popped.
    pub fn take(&mut self, places: &[Place]) -> Vec<T> {
        let mut removing: Vec<(usize, Place)> = places.iter().copied().enumerate().collect();
        // From the back of each lane first, so positions stay valid.
        removing.sort_by_key(|&(_, place)| std::cmp::Reverse(place));
        let mut taken: Vec<(usize, T)> = Vec::with_capacity(places.len());
        for (order, place) in removing {
            let backlog = self.tenants.get_mut(&place.tenant).expect("the place is in the queue");
            let entry = backlog.lanes[place.lane].remove(place.position).expect("the place is in the queue");
            self.now = self.now.max(backlog.next_start);
            backlog.next_start += entry.cost / backlog.weight;
            self.len -= 1;
            taken.push((order, entry.item));
        }
        taken.sort_by_key(|(order, _)| *order);
        taken.into_iter().map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(index: usize, weight: u32) -> Tenant {
        Tenant { index, name: format!("t{index}"), weight, max_priority: Priority::High }
    }

    #[test]
    fn backlogged_tenants_share_by_weight_whatever_each_queued() {
        let (flood, light) = (tenant(1, 1), tenant(2, 2));
        let mut queue = FairQueue::default();
        for n in 0..1000 {
            queue.push(&flood, Priority::High, 1.0, ("flood", n));
        }
        for n in 0..100 {
            queue.push(&light, Priority::Low, 1.0, ("light", n));
        }
        let first: Vec<&str> = (0..30).map(|_| queue.pop().unwrap().0).collect();
        let light_served = first.iter().filter(|name| **name == "light").count();
        assert_eq!(light_served, 20, "weight 2 against 1: two turns in three, {first:?}");
    }

    #[test]
    fn a_tenant_arriving_late_is_served_next_and_idle_time_earns_nothing() {
        let (flood, late) = (tenant(1, 1), tenant(2, 1));
        let mut queue = FairQueue::default();
        for n in 0..50 {
            queue.push(&flood, Priority::Normal, 1.0, n);
        }
        for _ in 0..10 {
            queue.pop();
        }
        queue.push(&late, Priority::Normal, 1.0, 1000);
        queue.push(&late, Priority::Normal, 1.0, 1001);
        let next: Vec<i32> = (0..4).map(|_| queue.pop().unwrap()).collect();
        assert!(next[..2].contains(&1000), "the newcomer is served at once: {next:?}");
        assert_eq!(next.iter().filter(|n| **n >= 1000).count(), 2, "and takes turns, no more: {next:?}");
    }

    #[test]
    fn priorities_order_a_tenants_own_items_only() {
        let (a, b) = (tenant(1, 1), tenant(2, 1));
        let mut queue = FairQueue::default();
        queue.push(&a, Priority::Low, 1.0, "a-low");
        queue.push(&a, Priority::High, 1.0, "a-high");
        queue.push(&b, Priority::Normal, 1.0, "b-normal");
        let order: Vec<&str> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, ["a-high", "b-normal", "a-low"]);
    }

    #[test]
    fn push_out_takes_from_the_tenant_over_its_share() {
        let (flood, other) = (tenant(1, 1), tenant(2, 1));
        let mut queue = FairQueue::default();
        queue.push(&flood, Priority::High, 1.0, "flood-high");
        for _ in 0..9 {
            queue.push(&flood, Priority::Normal, 1.0, "flood");
        }
        assert_eq!(queue.evict_for(&flood), None, "a tenant never displaces itself");
        assert_eq!(queue.evict_for(&other), Some("flood"));
        assert_eq!(queue.len(), 9);
        for _ in 0..4 {
            queue.push(&other, Priority::Normal, 1.0, "other");
        }
        // 9 against 5 with the arrival: still over.
        assert_eq!(queue.evict_for(&other), Some("flood"));
        for _ in 0..3 {
            queue.push(&other, Priority::Normal, 1.0, "other");
        }
        // Flood holds 8, other would hold 8: an even split, no more push-out.
        assert_eq!(queue.evict_for(&other), None);
    }

    #[test]
    fn taking_in_turn_order_matches_popping() {
        let (a, b) = (tenant(1, 1), tenant(2, 3));
        let mut popped = FairQueue::default();
        let mut taken = FairQueue::default();
        for queue in [&mut popped, &mut taken] {
            for n in 0..12 {
                queue.push(&a, Priority::Normal, 1.0, ('a', n));
                queue.push(&b, Priority::Normal, 1.0, ('b', n));
            }
        }
        let by_pop: Vec<(char, i32)> = (0..8).map(|_| popped.pop().unwrap()).collect();
        let places: Vec<Place> = taken.in_turn_order().iter().take(8).map(|turn| turn.place).collect();
        assert_eq!(taken.take(&places), by_pop);
        // And both queues go on alike.
        let rest_popped: Vec<_> = std::iter::from_fn(|| popped.pop()).collect();
        let rest_taken: Vec<_> = std::iter::from_fn(|| taken.pop()).collect();
        assert_eq!(rest_popped, rest_taken);
    }

    #[test]
    fn dropping_items_keeps_the_count() {
        let a = tenant(1, 1);
        let mut queue = FairQueue::default();
        for n in 0..10 {
            queue.push(&a, Priority::Normal, 1.0, n);
        }
        queue.retain(|n| *n % 2 == 0);
        assert_eq!((queue.len(), queue.queued_for(1)), (5, 5));
        assert_eq!(std::iter::from_fn(|| queue.pop()).collect::<Vec<_>>(), [0, 2, 4, 6, 8]);
    }
}
