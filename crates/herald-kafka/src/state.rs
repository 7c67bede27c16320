//! What one stream knows of its partitions: which records it received and which of them are
//! settled, so that the offset it commits never passes the lowest unsettled record.
//!
//! Each assigned partition keeps the offsets received and not yet settled. Settling a record
//! marks it; the commit point moves to the offset after the last of the settled records that
//! follow each other from the start. A partition assigned anew gets a new generation: records
//! of an earlier assignment settle nothing there (the partition's new owner delivers them
//! again).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use herald_core::Envelope;

use crate::mapping::RecordHeaders;

/// A topic partition.
pub(crate) type Tp = (String, i32);

/// A record as received, decoded, with its place in the log.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// The assignment of the partition the record was received under.
    pub(crate) generation: u64,
    pub(crate) envelope: Envelope,
    pub(crate) attempt: u32,
    pub(crate) redelivered: bool,
    /// When it may be handed out (Unix milliseconds; 0 at once).
    pub(crate) due_ms: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: RecordHeaders,
    pub(crate) payload: Bytes,
}

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    /// Offsets received and whether each is settled, from the lowest unsettled one on.
    outstanding: BTreeMap<i64, bool>,
    /// The offset to commit (last contiguous settled + 1), if it moved since the last commit.
    to_commit: Option<i64>,
}

/// The stream's state, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    partitions: HashMap<Tp, Partition>,
    generations: u64,
    /// Received, not handed out, due now.
    pub(crate) ready: VecDeque<Arc<Received>>,
    /// Received, not handed out, due later (sorted by due time).
    pub(crate) delayed: Vec<Arc<Received>>,
    /// Handed out and not settled.
    pub(crate) handed_out: usize,
    /// The consumer stopped for good.
    pub(crate) ended: bool,
    /// The partitions were (re)assigned since the poll task last paused them.
    pub(crate) reassigned: bool,
}

impl State {
    /// Records of the partitions assigned now; earlier records of them no longer settle.
    pub(crate) fn assign(&mut self, tps: impl IntoIterator<Item = Tp>) {
        for tp in tps {
            self.generations += 1;
            self.partitions.insert(
                tp,
                Partition {
                    generation: self.generations,
                    ..Partition::default()
                },
            );
        }
        self.reassigned = true;
    }

    /// Forgets revoked partitions and their records not handed out; returns the offsets
    /// still to commit for them.
    pub(crate) fn revoke(&mut self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        let mut commits = Vec::new();
        for tp in tps {
            if let Some(partition) = self.partitions.remove(tp)
                && let Some(offset) = partition.to_commit
            {
                commits.push((tp.clone(), offset));
            }
        }
        let keep = |r: &Arc<Received>| {
            self.partitions
                .contains_key(&(r.topic.clone(), r.partition))
        };
        let ready: VecDeque<_> = self.ready.drain(..).filter(keep).collect();
        let delayed: Vec<_> = self.delayed.drain(..).filter(keep).collect();
        self.ready = ready;
        self.delayed = delayed;
        commits
    }

    /// Notes a received record; returns its partition's generation, `None` when the
    /// partition is not assigned (a record that arrived after its revocation).
    pub(crate) fn track(&mut self, topic: &str, partition: i32, offset: i64) -> Option<u64> {
        let p = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        p.outstanding.insert(offset, false);
        Some(p.generation)
    }

    /// Marks a record settled; returns whether its partition's commit point moved.
    pub(crate) fn settle(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        generation: u64,
    ) -> bool {
        let Some(p) = self.partitions.get_mut(&(topic.to_owned(), partition)) else {
            return false;
        };
        if p.generation != generation {
            return false;
        }
        match p.outstanding.get_mut(&offset) {
            Some(settled) => *settled = true,
            None => return false,
        }
        let mut moved = false;
        while let Some(entry) = p.outstanding.first_entry() {
            if !*entry.get() {
                break;
            }
            p.to_commit = Some(*entry.key() + 1);
            entry.remove();
            moved = true;
        }
        moved
    }

    /// Takes the offsets to commit of every partition whose commit point moved.
    pub(crate) fn take_commits(&mut self) -> Vec<(Tp, i64)> {
        self.partitions
            .iter_mut()
            .filter_map(|(tp, p)| p.to_commit.take().map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Gives back offsets whose commit failed, unless a later one is due already.
    pub(crate) fn restore_commits(&mut self, commits: Vec<(Tp, i64)>) {
        for (tp, offset) in commits {
            if let Some(p) = self.partitions.get_mut(&tp)
                && p.to_commit.is_none_or(|o| o < offset)
            {
                p.to_commit = Some(offset);
            }
        }
    }

    /// Whether the record's partition is still assigned under the record's generation.
    pub(crate) fn is_current(&self, record: &Received) -> bool {
        self.partitions
            .get(&(record.topic.clone(), record.partition))
            .is_some_and(|p| p.generation == record.generation)
    }

    /// Queues a received record: at once or when due.
    pub(crate) fn push(&mut self, record: Arc<Received>, now_ms: i64) {
        if record.due_ms > now_ms {
            let at = self.delayed.partition_point(|r| r.due_ms <= record.due_ms);
            self.delayed.insert(at, record);
        } else {
            self.ready.push_back(record);
        }
    }

    /// Moves the delayed records that are due to the ready queue; returns when the next one
    /// is due.
    pub(crate) fn promote(&mut self, now_ms: i64) -> Option<i64> {
        let due = self.delayed.partition_point(|r| r.due_ms <= now_ms);
        self.ready.extend(self.delayed.drain(..due));
        self.delayed.first().map(|r| r.due_ms)
    }

    /// Records received and not handed out.
    pub(crate) fn buffered(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("t".to_owned(), p)
    }

    #[test]
    fn the_commit_point_stops_at_the_lowest_unsettled_offset() {
        let mut state = State::default();
        state.assign([tp(0)]);
        let g = (0..5)
            .map(|o| state.track("t", 0, o))
            .last()
            .flatten()
            .expect("assigned");
        assert!(!state.settle("t", 0, 1, g), "offset 0 is unsettled");
        assert!(!state.settle("t", 0, 3, g));
        assert!(state.take_commits().is_empty());
        assert!(state.settle("t", 0, 0, g));
        assert_eq!(
            state.take_commits(),
            vec![(tp(0), 2)],
            "last contiguous settled + 1"
        );
        assert!(state.settle("t", 0, 2, g));
        assert_eq!(state.take_commits(), vec![(tp(0), 4)]);
        assert!(state.settle("t", 0, 4, g));
        assert_eq!(state.take_commits(), vec![(tp(0), 5)]);
    }

    #[test]
    fn records_of_an_earlier_assignment_settle_nothing() {
        let mut state = State::default();
        state.assign([tp(0)]);
        let old = state.track("t", 0, 0).expect("assigned");
        assert!(state.revoke(&[tp(0)]).is_empty());
        state.assign([tp(0)]);
        assert!(!state.settle("t", 0, 0, old));
        assert!(state.take_commits().is_empty());
    }

    #[test]
    fn a_revocation_hands_back_what_is_left_to_commit() {
        let mut state = State::default();
        state.assign([tp(0), tp(1)]);
        let g = state.track("t", 0, 7).expect("assigned");
        state.settle("t", 0, 7, g);
        assert_eq!(state.revoke(&[tp(0)]), vec![(tp(0), 8)]);
        assert!(state.track("t", 0, 8).is_none(), "no longer assigned");
    }
}
