//! What one stream knows of its partitions: which records it received and which of them are
//! settled, so that the offset it commits never passes the lowest unsettled record.
//!
//! Each assigned partition keeps the offsets received and not yet settled. Settling a record
//! marks it; the commit point moves to the offset after the last of the settled records that
//! follow each other from the start. The records settled beyond that point ride along in the
//! commit's metadata, so that the partition's next owner (a restarted group, a rebalance)
//! skips them and delivers exactly the unsettled ones again. A partition assigned anew gets a
//! new generation: records of an earlier assignment settle nothing there (the partition's new
//! owner delivers them again).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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

/// Most bytes of commit metadata (brokers accept 4096 by default).
const MAX_METADATA: usize = 4000;
/// The prefix of Herald's commit metadata.
const METADATA_PREFIX: &str = "herald-settled:";

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    /// Offsets received and whether each is settled, from the lowest unsettled one on.
    outstanding: BTreeMap<i64, bool>,
    /// Last contiguous settled + 1, once a record was settled.
    point: Option<i64>,
    /// Whether something was settled since the last commit.
    dirty: bool,
    /// Offsets settled by an earlier owner beyond its commit point: not delivered again.
    skip: BTreeSet<i64>,
}

/// One commit: the partition, the offset and the settled offsets beyond it (metadata).
pub(crate) type Commit = (Tp, i64, String);

/// What [`State::track`] made of a received record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tracked {
    /// To deliver, under this generation of its partition.
    New(u64),
    /// Settled by an earlier owner of the partition: skip it.
    Settled,
    /// Its partition is not assigned (a record that arrived after its revocation).
    Unassigned,
}

impl Partition {
    /// Moves the commit point over the settled records at the start.
    fn advance(&mut self) {
        while let Some(entry) = self.outstanding.first_entry() {
            if !*entry.get() {
                break;
            }
            self.point = Some(*entry.key() + 1);
            entry.remove();
        }
    }

    /// The commit of this partition: the lowest unsettled offset (or the point past the
    /// last settled one) and the settled offsets beyond it, as deltas.
    fn commit(&self) -> Option<(i64, String)> {
        let offset = self.outstanding.keys().next().copied().or(self.point)?;
        let mut metadata = String::from(METADATA_PREFIX);
        for (o, _) in self.outstanding.iter().filter(|(_, settled)| **settled) {
            let delta = (o - offset).to_string();
            if metadata.len() + delta.len() + 1 > MAX_METADATA {
                break; // the rest is delivered again: safe, if redundant
            }
            if !metadata.ends_with(':') {
                metadata.push(',');
            }
            metadata.push_str(&delta);
        }
        Some((offset, metadata))
    }
}

/// The settled offsets that commit metadata written at `offset` names.
pub(crate) fn parse_metadata(offset: i64, metadata: &str) -> BTreeSet<i64> {
    let Some(list) = metadata.strip_prefix(METADATA_PREFIX) else {
        return BTreeSet::new();
    };
    list.split(',')
        .filter_map(|d| d.parse::<i64>().ok())
        .filter(|d| *d > 0)
        .map(|d| offset + d)
        .collect()
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
    /// The partitions were (re)assigned since the poll task last looked: it resumes them.
    pub(crate) reassigned: bool,
}

impl State {
    /// Records of the partitions assigned now, with the offsets an earlier owner settled
    /// beyond its commit point; earlier records of them no longer settle.
    pub(crate) fn assign(&mut self, tps: impl IntoIterator<Item = (Tp, BTreeSet<i64>)>) {
        for (tp, skip) in tps {
            self.generations += 1;
            self.partitions.insert(
                tp,
                Partition {
                    generation: self.generations,
                    skip,
                    ..Partition::default()
                },
            );
        }
        self.reassigned = true;
    }

    /// Forgets revoked partitions and their records not handed out; returns the offsets
    /// still to commit for them.
    pub(crate) fn revoke(&mut self, tps: &[Tp]) -> Vec<Commit> {
        let mut commits = Vec::new();
        for tp in tps {
            if let Some(partition) = self.partitions.remove(tp)
                && partition.dirty
                && let Some((offset, metadata)) = partition.commit()
            {
                commits.push((tp.clone(), offset, metadata));
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

    /// Notes a received record.
    pub(crate) fn track(&mut self, topic: &str, partition: i32, offset: i64) -> Tracked {
        let Some(p) = self.partitions.get_mut(&(topic.to_owned(), partition)) else {
            return Tracked::Unassigned;
        };
        if p.skip.remove(&offset) {
            p.outstanding.insert(offset, true);
            p.advance();
            p.dirty = true;
            return Tracked::Settled;
        }
        p.outstanding.insert(offset, false);
        Tracked::New(p.generation)
    }

    /// Marks a record settled; returns whether there is something new to commit.
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
        p.advance();
        p.dirty = true;
        true
    }

    /// Takes the commits of every partition where something was settled since the last.
    pub(crate) fn take_commits(&mut self) -> Vec<Commit> {
        self.partitions
            .iter_mut()
            .filter_map(|(tp, p)| {
                if !std::mem::take(&mut p.dirty) {
                    return None;
                }
                p.commit().map(|(o, m)| (tp.clone(), o, m))
            })
            .collect()
    }

    /// Marks the partitions of commits that failed as still to commit.
    pub(crate) fn restore_commits(&mut self, commits: Vec<Commit>) {
        for (tp, _, _) in commits {
            if let Some(p) = self.partitions.get_mut(&tp) {
                p.dirty = true;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("t".to_owned(), p)
    }

    fn generation(tracked: Tracked) -> u64 {
        match tracked {
            Tracked::New(g) => g,
            other => panic!("not new: {other:?}"),
        }
    }

    fn offsets(commits: Vec<Commit>) -> Vec<(i64, String)> {
        commits.into_iter().map(|(_, o, m)| (o, m)).collect()
    }

    #[test]
    fn the_commit_point_stops_at_the_lowest_unsettled_offset() {
        let mut state = State::default();
        state.assign([(tp(0), BTreeSet::new())]);
        let g = (0..5)
            .map(|o| generation(state.track("t", 0, o)))
            .last()
            .expect("tracked");
        assert!(state.settle("t", 0, 1, g));
        assert!(state.settle("t", 0, 3, g));
        assert_eq!(
            offsets(state.take_commits()),
            vec![(0, "herald-settled:1,3".to_owned())],
            "offset 0 is unsettled: the commit stays there, naming what is settled beyond"
        );
        assert!(state.settle("t", 0, 0, g));
        assert_eq!(
            offsets(state.take_commits()),
            vec![(2, "herald-settled:1".to_owned())],
            "last contiguous settled + 1"
        );
        assert!(state.take_commits().is_empty(), "nothing new");
        state.settle("t", 0, 2, g);
        state.settle("t", 0, 4, g);
        assert_eq!(
            offsets(state.take_commits()),
            vec![(5, "herald-settled:".to_owned())]
        );
    }

    #[test]
    fn settled_offsets_in_the_metadata_are_skipped_by_the_next_owner() {
        let skip = parse_metadata(10, "herald-settled:1,3");
        assert_eq!(skip, BTreeSet::from([11, 13]));
        assert!(parse_metadata(10, "other client's metadata").is_empty());
        let mut state = State::default();
        state.assign([(tp(0), skip)]);
        let g = generation(state.track("t", 0, 10));
        assert_eq!(state.track("t", 0, 11), Tracked::Settled);
        generation(state.track("t", 0, 12));
        assert_eq!(state.track("t", 0, 13), Tracked::Settled);
        assert_eq!(
            offsets(state.take_commits()),
            vec![(10, "herald-settled:1,3".to_owned())]
        );
        state.settle("t", 0, 10, g);
        assert_eq!(
            offsets(state.take_commits()),
            vec![(12, "herald-settled:1".to_owned())]
        );
    }

    #[test]
    fn records_of_an_earlier_assignment_settle_nothing() {
        let mut state = State::default();
        state.assign([(tp(0), BTreeSet::new())]);
        let old = generation(state.track("t", 0, 0));
        assert!(state.revoke(&[tp(0)]).is_empty());
        state.assign([(tp(0), BTreeSet::new())]);
        assert!(!state.settle("t", 0, 0, old));
        assert!(state.take_commits().is_empty());
    }

    #[test]
    fn a_revocation_hands_back_what_is_left_to_commit() {
        let mut state = State::default();
        state.assign([(tp(0), BTreeSet::new()), (tp(1), BTreeSet::new())]);
        let g = generation(state.track("t", 0, 7));
        state.settle("t", 0, 7, g);
        assert_eq!(
            state.revoke(&[tp(0)]),
            vec![(tp(0), 8, "herald-settled:".to_owned())]
        );
        assert_eq!(state.track("t", 0, 8), Tracked::Unassigned);
    }
}
