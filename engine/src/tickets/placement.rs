//! Park assignment and backup placement of ticket files.
//!
//! Rule: node `i` is in park `i % 3`. Each node's files are copied to two peers, one in each
//! of the two other parks; in park `q` the peer of node `i` is the node of that park at
//! position `(i / 3) mod (nodes in park q)`. Nodes of a park thus spread their backups evenly
//! over the other parks, and when a park is lost, its next-slot files are already on nodes of
//! both surviving parks (file-level resume). With fewer than three nodes some parks are empty
//! and a node has fewer than two peers; the manifest then lists only the peers that exist.

use serde::{Deserialize, Serialize};

/// Number of parks (failure domains).
pub const PARKS: u16 = 3;

/// Park of a node.
pub fn park_of(node: u16) -> u16 {
    node % PARKS
}

/// Nodes of `park` in a fleet of `nodes` nodes.
fn nodes_in_park(park: u16, nodes: u16) -> u16 {
    if park >= nodes {
        0
    } else {
        (nodes - park).div_ceil(PARKS)
    }
}

/// Backup peers of `node` (one per other park that has nodes), in park order after its own.
pub fn peers_of(node: u16, nodes: u16) -> Vec<u16> {
    let park = park_of(node);
    let rank = node / PARKS;
    (1..PARKS)
        .map(|step| (park + step) % PARKS)
        .filter_map(|other_park| {
            let count = nodes_in_park(other_park, nodes);
            (count > 0).then(|| other_park + PARKS * (rank % count))
        })
        .collect()
}

/// Placement of one node's files in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlacement {
    /// The node.
    pub node: u16,
    /// Its park.
    pub park: u16,
    /// Nodes that hold a backup copy of all its files.
    pub backup_peers: Vec<u16>,
    /// Names of its ticket files.
    pub files: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_in_the_two_other_parks() {
        for nodes in 3..40u16 {
            for node in 0..nodes {
                let peers = peers_of(node, nodes);
                assert_eq!(peers.len(), 2);
                let mut parks: Vec<u16> = peers.iter().map(|&peer| park_of(peer)).collect();
                parks.push(park_of(node));
                parks.sort();
                assert_eq!(parks, vec![0, 1, 2]);
                assert!(peers.iter().all(|&peer| peer < nodes));
            }
        }
        assert_eq!(peers_of(0, 1), Vec::<u16>::new());
        assert_eq!(peers_of(0, 2), vec![1]);
    }
}
