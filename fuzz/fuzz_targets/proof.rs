//! Fuzzes the auditor's Merkle proofs (`trias_auditor::merkle`): verification of inclusion and
//! consistency proofs — what `trias audit verify` and any offline checker run on hashes an
//! auditor sent — and the proof ranges the auditor computes for a request's sizes.
//!
//! Three kinds of input: any hashes, sizes and indexes (sizes drawn towards the extremes of
//! u64); proof generation for any sizes, reading made-up node hashes; and real proofs from a
//! tree of up to a few hundred leaves, then changed by the fuzzer.
//!
//! Invariants: nothing panics; generation and verification agree on a proof's length for
//! every size; a real proof verifies, and no longer does once a hash, the leaf, a root, the
//! proof's length or the leaf index is changed.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use trias_auditor::merkle::{
    self, Frontier, Hash, NodeId, RangeError, VerifyError, leaf_hash, verify_consistency,
    verify_inclusion,
};

/// A u64, often an extreme one.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Size {
    Any(u64),
    Small(u8),
    /// 2^k, 2^k − 1 and 2^k + 1.
    Power(u8, i8),
    /// u64::MAX − n.
    NearMax(u8),
}

impl Size {
    fn get(self) -> u64 {
        match self {
            Size::Any(n) => n,
            Size::Small(n) => u64::from(n),
            Size::Power(k, delta) => {
                (1u64 << (k % 64)).wrapping_add_signed(i64::from(delta.signum()))
            }
            Size::NearMax(n) => u64::MAX - u64::from(n),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Input {
    Inclusion {
        index: Size,
        size: Size,
        leaf: Vec<u8>,
        proof: Vec<Vec<u8>>,
        root: Vec<u8>,
    },
    Consistency {
        size1: Size,
        size2: Size,
        proof: Vec<Vec<u8>>,
        root1: Vec<u8>,
        root2: Vec<u8>,
    },
    Generated {
        a: Size,
        b: Size,
    },
    Tree {
        leaves: u16,
        a: u16,
        b: u16,
        change: Change,
    },
}

/// What to change in a real proof.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Change {
    Nothing,
    FlipProofHash { which: u8, bit: u8 },
    FlipLeafOrFirstRoot { bit: u8 },
    FlipRoot { bit: u8 },
    DropLast,
    Append([u8; 32]),
    OtherIndex(u16),
}

fn flip(hash: &mut Hash, bit: u8) {
    hash[usize::from(bit / 8) % 32] ^= 1 << (bit % 8);
}

/// Makes `change` to a proof and the two hashes it is checked against (the leaf and the root,
/// or the two roots); whether anything changed. `OtherIndex` changes nothing here: only an
/// inclusion proof has an index, and its caller moves it.
fn apply(change: Change, proof: &mut Vec<Hash>, first: &mut Hash, second: &mut Hash) -> bool {
    match change {
        Change::Nothing | Change::OtherIndex(_) => false,
        Change::FlipProofHash { which, bit } => match proof.len() {
            0 => false,
            len => {
                flip(&mut proof[usize::from(which) % len], bit);
                true
            }
        },
        Change::FlipLeafOrFirstRoot { bit } => {
            flip(first, bit);
            true
        }
        Change::FlipRoot { bit } => {
            flip(second, bit);
            true
        }
        Change::DropLast => proof.pop().is_some(),
        Change::Append(hash) => {
            proof.push(hash);
            true
        }
    }
}

/// A made-up hash for every stored node: enough for generation, which only reads nodes.
fn made_up(id: NodeId) -> Result<Hash, RangeError> {
    let mut hash = [0u8; 32];
    hash[..4].copy_from_slice(&id.level.to_be_bytes());
    hash[4..12].copy_from_slice(&id.index.to_be_bytes());
    Ok(hash)
}

/// Proofs generated for any sizes have the length verification expects: with made-up node
/// hashes they may fail to reach the root, but never for their length.
fn generated(a: u64, b: u64) {
    let nodes = merkle::inclusion_nodes(a, b);
    match merkle::inclusion_proof(a, b, made_up) {
        Ok(proof) => {
            assert!(nodes.is_ok());
            let root = merkle::root_from(b, made_up).expect("made-up nodes are always there");
            let outcome = verify_inclusion(
                a,
                b,
                &made_up(NodeId::new(0, a)).unwrap_or_default(),
                &proof,
                &root,
            );
            assert_ne!(
                outcome,
                Err(VerifyError::WrongLength),
                "inclusion {a} in {b}"
            );
        }
        Err(error) => assert_eq!(nodes, Err(error)),
    }
    let nodes = merkle::consistency_nodes(a, b);
    match merkle::consistency_proof(a, b, made_up) {
        Ok(proof) => {
            assert!(nodes.is_ok());
            let root1 = merkle::root_from(a, made_up).expect("made-up nodes are always there");
            let root2 = merkle::root_from(b, made_up).expect("made-up nodes are always there");
            let outcome = verify_consistency(a, b, &proof, &root1, &root2);
            assert_ne!(
                outcome,
                Err(VerifyError::WrongLength),
                "consistency {a} to {b}"
            );
        }
        Err(error) => assert_eq!(nodes, Err(error)),
    }
    let positions = Frontier::positions(b);
    assert_eq!(positions.len(), b.count_ones() as usize);
    let hashes = positions
        .iter()
        .map(|&id| made_up(id).unwrap_or_default())
        .collect();
    assert!(Frontier::from_hashes(b, hashes).is_some());
}

/// A tree grown leaf by leaf, keeping every node, as the auditor's store does.
struct Tree {
    leaves: Vec<Hash>,
    /// The root at each size asked for.
    roots: HashMap<u64, Hash>,
    nodes: HashMap<NodeId, Hash>,
}

fn grow(n: u64, roots_at: [u64; 2]) -> Tree {
    let mut frontier = Frontier::new();
    let mut tree = Tree {
        leaves: Vec::new(),
        roots: HashMap::new(),
        nodes: HashMap::new(),
    };
    for i in 0..n {
        let leaf = leaf_hash(&i.to_be_bytes());
        tree.leaves.push(leaf);
        tree.nodes.extend(frontier.push(leaf));
        if roots_at.contains(&frontier.size()) {
            tree.roots.insert(frontier.size(), frontier.root());
        }
    }
    tree
}

fn real(leaves: u16, a: u16, b: u16, change: Change) {
    let size = u64::from(leaves % 300) + 1;
    let index = u64::from(a) % size;
    let from = u64::from(b) % size + 1;
    let tree = grow(size, [from, size]);
    let read = |id: NodeId| tree.nodes.get(&id).copied().ok_or(RangeError::EmptyFrom);

    // Inclusion of leaf `index` in the whole tree.
    let mut proof = merkle::inclusion_proof(index, size, read).expect("stored nodes");
    let mut leaf = tree.leaves[index as usize];
    let mut root = tree.roots[&size];
    let mut at = index;
    let changed = match change {
        Change::OtherIndex(other) => {
            at = u64::from(other) % size;
            at != index
        }
        _ => apply(change, &mut proof, &mut leaf, &mut root),
    };
    let outcome = verify_inclusion(at, size, &leaf, &proof, &root);
    assert_eq!(
        outcome.is_ok(),
        !changed,
        "inclusion {index} in {size}, {change:?}: {outcome:?}"
    );

    // Consistency from `from` to the whole tree.
    let mut proof = merkle::consistency_proof(from, size, read).expect("stored nodes");
    let mut root1 = tree.roots[&from];
    let mut root2 = tree.roots[&size];
    let changed = apply(change, &mut proof, &mut root1, &mut root2);
    let outcome = verify_consistency(from, size, &proof, &root1, &root2);
    assert_eq!(
        outcome.is_ok(),
        !changed,
        "consistency {from} to {size}, {change:?}: {outcome:?}"
    );
}

fuzz_target!(|input: Input| {
    match input {
        Input::Inclusion {
            index,
            size,
            leaf,
            proof,
            root,
        } => {
            let _ = verify_inclusion(index.get(), size.get(), &leaf, &proof, &root);
        }
        Input::Consistency {
            size1,
            size2,
            proof,
            root1,
            root2,
        } => {
            let _ = verify_consistency(size1.get(), size2.get(), &proof, &root1, &root2);
        }
        Input::Generated { a, b } => generated(a.get(), b.get()),
        Input::Tree {
            leaves,
            a,
            b,
            change,
        } => real(leaves, a, b, change),
    }
});
