//! Who shares secrets and masks with whom: the complete graph of the original protocol, or
//! the sparse graph of SecAgg+ (Bell et al., "Secure Single-Server Aggregation with
//! (Poly)Logarithmic Overhead", CCS 2020).
//!
//! The sparse graph is a random Harary graph: the cohort is placed on a ring in an order
//! drawn from the round's context, and each agent is joined to the `degree / 2` agents on
//! either side. Each agent then masks against and shares its secrets with its `degree`
//! neighbours only, so its work grows with the degree instead of the cohort. Both sides
//! derive the same order from the context (SHA-256 of it seeds a ChaCha20 shuffle), so the
//! graph never travels.

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use rand::seq::SliceRandom;

/// Domain separation of the graph's seed.
const LABEL: &[u8] = b"fedtune secagg+ graph v1";

/// A secure round's communication graph over agents `0..cohort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Graph {
    /// Neighbours on each side of the ring; `None` for the complete graph.
    half: Option<u32>,
    /// Ring position of each agent.
    position: Vec<u32>,
    /// The agent at each ring position.
    order: Vec<u32>,
}

impl Graph {
    /// The graph of a round: complete without a `degree`, or when the degree reaches
    /// `cohort - 1`; otherwise the Harary graph of that (even) degree on the ring the
    /// `context` orders.
    pub(crate) fn new(context: &[u8], cohort: u32, degree: Option<u32>) -> Self {
        let half = degree.map(|d| d / 2).filter(|&h| 2 * h + 1 < cohort);
        if half.is_none() {
            return Self {
                half: None,
                position: Vec::new(),
                order: Vec::new(),
            };
        }
        let seed = ring::digest::digest(&ring::digest::SHA256, &[LABEL, context].concat());
        let mut key = [0u8; 32];
        key.copy_from_slice(seed.as_ref());
        let mut order: Vec<u32> = (0..cohort).collect();
        order.shuffle(&mut ChaCha20Rng::from_seed(key));
        let mut position = vec![0; cohort as usize];
        for (p, &agent) in order.iter().enumerate() {
            position[agent as usize] = p as u32;
        }
        Self { half, position, order }
    }

    /// Whether every agent is every other's neighbour.
    pub(crate) fn is_complete(&self) -> bool {
        self.half.is_none()
    }

    /// Whether distinct agents `u` and `v` are neighbours.
    pub(crate) fn adjacent(&self, u: u32, v: u32) -> bool {
        if u == v {
            return false;
        }
        let Some(half) = self.half else {
            return true;
        };
        let n = self.order.len() as u32;
        let (pu, pv) = (self.position[u as usize], self.position[v as usize]);
        let d = pu.abs_diff(pv);
        d.min(n - d) <= half
    }

    /// `u`'s neighbours among `0..cohort`, sorted (never `u` itself).
    #[cfg(test)]
    pub(crate) fn neighbours(&self, u: u32, cohort: u32) -> Vec<u32> {
        let Some(half) = self.half else {
            return (0..cohort).filter(|&v| v != u).collect();
        };
        let n = self.order.len() as u32;
        let p = self.position[u as usize];
        let mut out: Vec<u32> = (1..=half)
            .flat_map(|d| {
                [
                    self.order[((p + d) % n) as usize],
                    self.order[((p + n - d) % n) as usize],
                ]
            })
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_graph_is_regular_symmetric_and_the_same_on_both_sides() {
        let graph = Graph::new(b"round 7", 100, Some(12));
        assert!(!graph.is_complete());
        assert_eq!(graph, Graph::new(b"round 7", 100, Some(12)));
        assert_ne!(graph, Graph::new(b"round 8", 100, Some(12)));
        for u in 0..100 {
            let neighbours = graph.neighbours(u, 100);
            assert_eq!(neighbours.len(), 12, "agent {u}");
            assert!(!neighbours.contains(&u));
            for v in 0..100 {
                assert_eq!(graph.adjacent(u, v), neighbours.contains(&v), "{u} {v}");
                assert_eq!(graph.adjacent(u, v), graph.adjacent(v, u));
            }
        }
    }

    #[test]
    fn a_degree_that_reaches_the_cohort_is_the_complete_graph() {
        for degree in [None, Some(4), Some(10)] {
            let graph = Graph::new(b"c", 5, degree);
            assert!(graph.is_complete(), "{degree:?}");
            assert_eq!(graph.neighbours(2, 5), [0, 1, 3, 4]);
            assert!(graph.adjacent(0, 4) && !graph.adjacent(3, 3));
        }
        // Degree 4 over 6 agents leaves each agent one non-neighbour.
        let graph = Graph::new(b"c", 6, Some(4));
        assert!(!graph.is_complete());
        assert!((0..6).all(|u| graph.neighbours(u, 6).len() == 4));
    }
}
