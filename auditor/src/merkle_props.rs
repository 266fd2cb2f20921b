//! Property tests of the Merkle tree (`merkle.rs`) against a naive reference written straight
//! from RFC 6962 §2.1: MTH, PATH and PROOF/SUBPROOF as recursive functions over the list of
//! entries, hashing with ring directly. The reference shares no code with the module under
//! test — not its hash helpers, not its split point — so a mistake in either shows as a
//! difference. Random trees of up to 300 entries, 64 cases a test: each runs in under half a
//! second in a debug build on a 2-core machine.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::sample::Index;
use ring::digest::{SHA256, digest};

use crate::merkle::{
    self, Frontier, Hash, NodeId, RangeError, leaf_hash, verify_consistency, verify_inclusion,
};

// ----- RFC 6962 §2.1, as written -----

fn sha256(bytes: &[u8]) -> Hash {
    digest(&SHA256, bytes).as_ref().try_into().unwrap()
}

/// "k be the largest power of two smaller than n (i.e., k < n <= 2k)".
fn largest_power_of_two_below(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]).
fn mth(entries: &[Vec<u8>]) -> Hash {
    match entries {
        [] => sha256(&[]),
        [only] => sha256(&[&[0x00], only.as_slice()].concat()),
        _ => {
            let k = largest_power_of_two_below(entries.len());
            let (left, right) = (mth(&entries[..k]), mth(&entries[k..]));
            sha256(&[&[0x01], left.as_slice(), right.as_slice()].concat())
        }
    }
}

/// PATH(m, D[n]) (§2.1.1).
fn path(m: usize, entries: &[Vec<u8>]) -> Vec<Hash> {
    let n = entries.len();
    if n == 1 {
        return Vec::new();
    }
    let k = largest_power_of_two_below(n);
    if m < k {
        let mut proof = path(m, &entries[..k]);
        proof.push(mth(&entries[k..]));
        proof
    } else {
        let mut proof = path(m - k, &entries[k..]);
        proof.push(mth(&entries[..k]));
        proof
    }
}

/// PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (§2.1.2).
fn proof(m: usize, entries: &[Vec<u8>]) -> Vec<Hash> {
    subproof(m, entries, true)
}

fn subproof(m: usize, entries: &[Vec<u8>], b: bool) -> Vec<Hash> {
    let n = entries.len();
    if m == n {
        return if b { Vec::new() } else { vec![mth(entries)] };
    }
    let k = largest_power_of_two_below(n);
    if m <= k {
        let mut proof = subproof(m, &entries[..k], b);
        proof.push(mth(&entries[k..]));
        proof
    } else {
        let mut proof = subproof(m - k, &entries[k..], false);
        proof.push(mth(&entries[..k]));
        proof
    }
}

// ----- the module under test, as the auditor uses it -----

/// A log grown through the frontier, keeping every node it completes, as the store does.
struct Log {
    nodes: HashMap<NodeId, Hash>,
    /// The frontier's root after each append; `roots[0]` is the empty tree's.
    roots: Vec<Hash>,
}

fn grow(entries: &[Vec<u8>]) -> Log {
    let mut frontier = Frontier::new();
    let mut log = Log {
        nodes: HashMap::new(),
        roots: vec![frontier.root()],
    };
    for entry in entries {
        log.nodes.extend(frontier.push(leaf_hash(entry)));
        log.roots.push(frontier.root());
    }
    log
}

impl Log {
    fn read(&self, id: NodeId) -> Result<Hash, RangeError> {
        // A node the store never wrote: no RangeError says it, so reuse one; the proofs below
        // unwrap, so a missing node fails the test either way.
        self.nodes.get(&id).copied().ok_or(RangeError::EmptyFrom)
    }
}

/// Compares two proofs hash by hash, naming the first that differs.
fn same_nodes(got: &[Hash], want: &[Hash], what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: proof length", what);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert_eq!(g, w, "{}: node {} of {}", what, i, want.len());
    }
    Ok(())
}

fn flipped(mut hash: Hash, bit: usize) -> Hash {
    hash[bit / 8 % 32] ^= 1 << (bit % 8);
    hash
}

/// A list of up to `max` short entries.
fn entries(min: usize, max: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), min..=max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_root_of_every_prefix_is_mth(entries in entries(0, 300)) {
        let log = grow(&entries);
        for n in 0..=entries.len() {
            let want = mth(&entries[..n]);
            prop_assert_eq!(log.roots[n], want, "frontier root of {} entries", n);
            let size = n as u64;
            prop_assert_eq!(merkle::root_from(size, |id| log.read(id)), Ok(want), "stored root of {}", n);
            let restored = Frontier::from_hashes(
                size,
                Frontier::positions(size).iter().map(|id| log.nodes[id]).collect(),
            )
            .unwrap();
            prop_assert_eq!(restored.root(), want, "restored frontier of {}", n);
        }
        prop_assert_eq!(
            merkle::root_of_entries(entries.iter().map(Vec::as_slice)),
            mth(&entries)
        );
    }

    #[test]
    fn inclusion_proofs_are_path_node_by_node(
        entries in entries(1, 300),
        picks in prop::collection::vec((any::<Index>(), any::<Index>(), any::<usize>()), 1..6),
    ) {
        let log = grow(&entries);
        let n = entries.len();
        let root = mth(&entries);
        for (size_pick, index_pick, bit) in picks {
            // A leaf of a prefix of the log, as a proof against an older checkpoint is.
            let size = size_pick.index(n) + 1;
            let m = index_pick.index(size);
            let what = format!("leaf {m} of {size}");
            let want = path(m, &entries[..size]);
            let got = merkle::inclusion_proof(m as u64, size as u64, |id| log.read(id)).unwrap();
            same_nodes(&got, &want, &what)?;

            let leaf = leaf_hash(&entries[m]);
            let size_root = if size == n { root } else { mth(&entries[..size]) };
            let verify = |leaf: &Hash, proof: &[Hash], root: &Hash| {
                verify_inclusion(m as u64, size as u64, leaf, proof, root)
            };
            prop_assert_eq!(verify(&leaf, &want, &size_root), Ok(()), "{}", what);
            if !want.is_empty() {
                let mut changed = want.clone();
                let at = bit % changed.len();
                changed[at] = flipped(changed[at], bit / 32);
                prop_assert!(verify(&leaf, &changed, &size_root).is_err(), "{}: hash {} changed", what, at);
            }
            prop_assert!(verify(&flipped(leaf, bit), &want, &size_root).is_err(), "{}: leaf changed", what);
            prop_assert!(verify(&leaf, &want, &flipped(size_root, bit)).is_err(), "{}: root changed", what);
        }
    }

    #[test]
    fn consistency_proofs_are_proof_node_by_node(
        entries in entries(1, 300),
        picks in prop::collection::vec((any::<Index>(), any::<Index>(), any::<usize>()), 1..6),
    ) {
        let log = grow(&entries);
        let n = entries.len();
        for (to_pick, from_pick, bit) in picks {
            let to = to_pick.index(n) + 1;
            let from = from_pick.index(to) + 1;
            let what = format!("{from} to {to}");
            let want = proof(from, &entries[..to]);
            let got = merkle::consistency_proof(from as u64, to as u64, |id| log.read(id)).unwrap();
            same_nodes(&got, &want, &what)?;

            let (root1, root2) = (mth(&entries[..from]), mth(&entries[..to]));
            let verify = |proof: &[Hash], root1: &Hash, root2: &Hash| {
                verify_consistency(from as u64, to as u64, proof, root1, root2)
            };
            prop_assert_eq!(verify(&want, &root1, &root2), Ok(()), "{}", what);
            if !want.is_empty() {
                let mut changed = want.clone();
                let at = bit % changed.len();
                changed[at] = flipped(changed[at], bit / 32);
                prop_assert!(verify(&changed, &root1, &root2).is_err(), "{}: hash {} changed", what, at);
            }
            prop_assert!(verify(&want, &flipped(root1, bit), &root2).is_err(), "{}: first root changed", what);
            prop_assert!(verify(&want, &root1, &flipped(root2, bit)).is_err(), "{}: second root changed", what);
        }
    }
}

/// The reference itself, on the RFC 6962 test data the module's own tests also use, so that
/// the properties above compare against something known to be right.
#[test]
fn the_reference_gives_the_known_roots() {
    assert_eq!(
        data_encoding::HEXLOWER.encode(&mth(&[])),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        data_encoding::HEXLOWER.encode(&mth(&[Vec::new()])),
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    );
    // The eight-leaf tree of RFC 6962's test vectors (Certificate Transparency's
    // merkle_tree_test): its root and one inclusion path.
    let leaves: Vec<Vec<u8>> = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|hex| data_encoding::HEXLOWER.decode(hex.as_bytes()).unwrap())
    .collect();
    assert_eq!(
        data_encoding::HEXLOWER.encode(&mth(&leaves)),
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    );
    assert_eq!(path(0, &leaves).len(), 3);
    assert_eq!(proof(4, &leaves).len(), 1);
}
