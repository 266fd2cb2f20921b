//! The log's Merkle tree (RFC 9162 §2.1, RFC 6962 hashing): leaf and node hashes, the
//! frontier that grows the tree one leaf at a time, proof generation from stored nodes, and
//! proof verification. Pure: no I/O, no clock.
//!
//! Stored nodes are named by [`NodeId`]: `(level, index)` is the root of the perfect subtree
//! over leaves `[index·2^level, (index+1)·2^level)`, level 0 being the leaf hashes. Only perfect
//! subtrees are ever stored; a subtree cut by the right edge of a tree (an "ephemeral" node) is
//! folded from the perfect subtrees that cover it, so a proof reads O(log n) nodes and never
//! rehashes leaves.

use ring::digest::{Context, SHA256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A perfect subtree of the log: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u32,
    pub index: u64,
}

impl NodeId {
    pub fn new(level: u32, index: u64) -> NodeId {
        NodeId { level, index }
    }
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut context = Context::new(&SHA256);
    for part in parts {
        context.update(part);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(context.finish().as_ref());
    hash
}

/// The hash of a leaf: SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    sha256(&[&[0x00], entry])
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// The right edge of a tree: the roots of its maximal perfect subtrees, left (largest) to
/// right (smallest), one for each set bit of the size. Enough to append and to compute the
/// root; the sequencer keeps it in memory and stores the nodes each append completes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the frontier of a tree of `size` leaves lies, left to right.
    pub fn positions(size: u64) -> Vec<NodeId> {
        (0..64u32)
            .rev()
            .filter(|bit| size & (1u64 << bit) != 0)
            .map(|bit| NodeId::new(bit, (size >> bit) - 1))
            .collect()
    }

    /// The frontier of a tree of `size` leaves from the hashes at [`Frontier::positions`];
    /// `None` if there are not exactly as many hashes as positions.
    pub fn from_hashes(size: u64, hashes: Vec<Hash>) -> Option<Frontier> {
        (hashes.len() == size.count_ones() as usize).then_some(Frontier { size, hashes })
    }

    /// Appends a leaf (its hash) and returns every node this completes, the leaf first: the
    /// nodes to store.
    pub fn push(&mut self, leaf: Hash) -> Vec<(NodeId, Hash)> {
        let mut id = NodeId::new(0, self.size);
        let mut hash = leaf;
        let mut completed = vec![(id, hash)];
        // An odd index is a right child: its left sibling is the frontier's last subtree.
        while id.index & 1 == 1 {
            let Some(left) = self.hashes.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            id = NodeId::new(id.level + 1, id.index >> 1);
            completed.push((id, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
        completed
    }

    /// The tree's root hash (RFC 9162 MTH).
    pub fn root(&self) -> Hash {
        let mut rest = self.hashes.iter().rev();
        let Some(last) = rest.next() else {
            return empty_root();
        };
        rest.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// A proof asked for a range the tree does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("index {index} is not below tree size {size}")]
    Index { index: u64, size: u64 },
    #[error("from_size {from} is larger than to_size {to}")]
    Sizes { from: u64, to: u64 },
    #[error("a consistency proof needs from_size of at least 1: every tree extends the empty tree")]
    EmptyFrom,
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The perfect subtrees covering leaves `[start, end)`, left to right; `start` is aligned to
/// the subtree the range belongs to, as every range of the RFC 9162 recursion is.
fn cover(start: u64, end: u64) -> Vec<NodeId> {
    let mut nodes = Vec::new();
    let mut at = start;
    while at < end {
        let mut level = if at == 0 { 63 } else { at.trailing_zeros() };
        while level > 0 && (1u64 << level) > end - at {
            level -= 1;
        }
        nodes.push(NodeId::new(level, at >> level));
        at += 1u64 << level;
    }
    nodes
}

/// The ranges whose hashes make the inclusion proof of leaf `m` in `[start, start + n)`,
/// leaf side first (RFC 9162 §2.1.3.1 PATH).
fn path(m: u64, start: u64, n: u64, out: &mut Vec<(u64, u64)>) {
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, start, k, out);
        out.push((start + k, start + n));
    } else {
        path(m - k, start + k, n - k, out);
        out.push((start, start + k));
    }
}

/// The ranges whose hashes make the consistency proof (RFC 9162 §2.1.4.1 SUBPROOF).
fn subproof(m: u64, start: u64, n: u64, whole: bool, out: &mut Vec<(u64, u64)>) {
    if m == n {
        if !whole {
            out.push((start, start + n));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, k, whole, out);
        out.push((start + k, start + n));
    } else {
        subproof(m - k, start + k, n - k, false, out);
        out.push((start, start + k));
    }
}

fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<(u64, u64)>, RangeError> {
    if index >= size {
        return Err(RangeError::Index { index, size });
    }
    let mut ranges = Vec::new();
    path(index, 0, size, &mut ranges);
    Ok(ranges)
}

fn consistency_ranges(from: u64, to: u64) -> Result<Vec<(u64, u64)>, RangeError> {
    if from > to {
        return Err(RangeError::Sizes { from, to });
    }
    if from == 0 {
        return Err(RangeError::EmptyFrom);
    }
    let mut ranges = Vec::new();
    subproof(from, 0, to, true, &mut ranges);
    Ok(ranges)
}

fn nodes_of(ranges: &[(u64, u64)]) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = ranges.iter().flat_map(|&(a, b)| cover(a, b)).collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// The stored nodes an inclusion proof reads: O(log n) of them, to fetch in one go.
pub fn inclusion_nodes(index: u64, size: u64) -> Result<Vec<NodeId>, RangeError> {
    Ok(nodes_of(&inclusion_ranges(index, size)?))
}

/// The stored nodes a consistency proof reads.
pub fn consistency_nodes(from: u64, to: u64) -> Result<Vec<NodeId>, RangeError> {
    Ok(nodes_of(&consistency_ranges(from, to)?))
}

fn hashes_of<E>(
    ranges: &[(u64, u64)],
    read: &mut impl FnMut(NodeId) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    ranges
        .iter()
        .map(|&(a, b)| {
            let nodes = cover(a, b);
            let mut hashes = Vec::with_capacity(nodes.len());
            for node in nodes {
                hashes.push(read(node)?);
            }
            let mut rest = hashes.iter().rev();
            let last = rest.next().copied().unwrap_or_else(empty_root);
            Ok(rest.fold(last, |right, left| node_hash(left, &right)))
        })
        .collect()
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves, reading stored nodes
/// through `read` (each of [`inclusion_nodes`] once).
pub fn inclusion_proof<E: From<RangeError>>(
    index: u64,
    size: u64,
    mut read: impl FnMut(NodeId) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    hashes_of(&inclusion_ranges(index, size)?, &mut read)
}

/// The consistency proof from the tree of `from` leaves to the tree of `to` leaves
/// (0 < from ≤ to), reading stored nodes through `read`.
pub fn consistency_proof<E: From<RangeError>>(
    from: u64,
    to: u64,
    mut read: impl FnMut(NodeId) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    hashes_of(&consistency_ranges(from, to)?, &mut read)
}

/// The root of the tree of `size` leaves from stored nodes (its frontier).
pub fn root_from<E>(size: u64, mut read: impl FnMut(NodeId) -> Result<Hash, E>) -> Result<Hash, E> {
    if size == 0 {
        return Ok(empty_root());
    }
    Ok(hashes_of(&[(0, size)], &mut read)?
        .pop()
        .unwrap_or_else(empty_root))
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("index {index} is not below tree size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("size1 {size1} is larger than size2 {size2}")]
    SizesOutOfOrder { size1: u64, size2: u64 },
    #[error("a consistency proof from the empty tree proves nothing")]
    EmptyFirst,
    #[error("a hash is not 32 bytes")]
    BadHash,
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the root")]
    RootMismatch,
}

fn check_hashes<H: AsRef<[u8]>>(proof: &[H]) -> Result<(), VerifyError> {
    if proof.iter().all(|h| h.as_ref().len() == 32) {
        Ok(())
    } else {
        Err(VerifyError::BadHash)
    }
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is
/// `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion<H: AsRef<[u8]>>(
    index: u64,
    size: u64,
    leaf_hash: &[u8],
    proof: &[H],
    root: &[u8],
) -> Result<(), VerifyError> {
    if index >= size {
        return Err(VerifyError::IndexBeyondSize { index, size });
    }
    if leaf_hash.len() != 32 {
        return Err(VerifyError::BadHash);
    }
    check_hashes(proof)?;
    let (mut f, mut s) = (index, size - 1);
    let mut r: Hash = [0; 32];
    r.copy_from_slice(leaf_hash);
    for p in proof {
        let p = p.as_ref();
        if s == 0 {
            return Err(VerifyError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(VerifyError::WrongLength);
    }
    if r.as_slice() != root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `size1` leaves with root `root1` is a prefix of the tree of
/// `size2` leaves with root `root2` (RFC 9162 §2.1.4.2). Equal sizes need an empty proof
/// and equal roots; a first size of 0 is refused, since it proves nothing.
pub fn verify_consistency<H: AsRef<[u8]>>(
    size1: u64,
    size2: u64,
    proof: &[H],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), VerifyError> {
    if size1 > size2 {
        return Err(VerifyError::SizesOutOfOrder { size1, size2 });
    }
    if size1 == 0 {
        return Err(VerifyError::EmptyFirst);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(VerifyError::WrongLength);
        }
        return if root1 == root2 {
            Ok(())
        } else {
            Err(VerifyError::RootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(VerifyError::WrongLength);
    }
    check_hashes(proof)?;
    let mut path: Vec<&[u8]> = proof.iter().map(AsRef::as_ref).collect();
    if size1.is_power_of_two() {
        path.insert(0, root1);
    }
    let (mut f, mut s) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let first = path.first().copied().unwrap_or_default();
    let (mut fr, mut sr) = (first.to_vec(), first.to_vec());
    for c in path.iter().skip(1) {
        if s == 0 {
            return Err(VerifyError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr).to_vec();
            sr = node_hash(c, &sr).to_vec();
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c).to_vec();
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(VerifyError::WrongLength);
    }
    if fr != root1 || sr != root2 {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// The root of a whole list of entries, recomputed leaf by leaf: for offline verification
/// of an export, where every leaf is at hand anyway.
pub fn root_of_entries<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Hash {
    let mut frontier = Frontier::new();
    for entry in entries {
        frontier.push(leaf_hash(entry));
    }
    frontier.root()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use data_encoding::BASE64;
    use serde_json::Value;

    use super::*;

    // ----- the RFC 6962 vectors -----

    fn vectors_dir() -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/merkle");
        assert!(
            dir.is_dir(),
            "the Merkle test vectors are missing at {}",
            dir.display()
        );
        dir
    }

    fn json_files(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    files.push(path);
                }
            }
        }
        files.sort();
        files
    }

    fn bytes(value: &Value) -> Vec<u8> {
        BASE64.decode(value.as_str().unwrap().as_bytes()).unwrap()
    }

    fn proof(value: &Value) -> Vec<Vec<u8>> {
        match value {
            Value::Null => Vec::new(),
            Value::Array(items) => items.iter().map(bytes).collect(),
            other => panic!("proof is {other}"),
        }
    }

    fn read(path: &Path) -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn every_inclusion_vector_has_its_expected_outcome() {
        let files = json_files(&vectors_dir().join("inclusion"));
        assert!(files.len() > 50, "found {} inclusion vectors", files.len());
        let (mut accepted, mut rejected) = (0, 0);
        for file in files {
            let v = read(&file);
            let outcome = verify_inclusion(
                v["leafIdx"].as_u64().unwrap(),
                v["treeSize"].as_u64().unwrap(),
                &bytes(&v["leafHash"]),
                &proof(&v["proof"]),
                &bytes(&v["root"]),
            );
            let want_err = v["wantErr"].as_bool().unwrap();
            assert_eq!(
                outcome.is_err(),
                want_err,
                "{}: {outcome:?}",
                file.display()
            );
            if want_err {
                rejected += 1;
            } else {
                accepted += 1;
            }
        }
        assert!(accepted > 0 && rejected > 0);
    }

    #[test]
    fn every_consistency_vector_has_its_expected_outcome() {
        let files = json_files(&vectors_dir().join("consistency"));
        assert!(
            files.len() > 50,
            "found {} consistency vectors",
            files.len()
        );
        let (mut accepted, mut rejected) = (0, 0);
        for file in files {
            let v = read(&file);
            let outcome = verify_consistency(
                v["size1"].as_u64().unwrap(),
                v["size2"].as_u64().unwrap(),
                &proof(&v["proof"]),
                &bytes(&v["root1"]),
                &bytes(&v["root2"]),
            );
            let want_err = v["wantErr"].as_bool().unwrap();
            assert_eq!(
                outcome.is_err(),
                want_err,
                "{}: {outcome:?}",
                file.display()
            );
            if want_err {
                rejected += 1;
            } else {
                accepted += 1;
            }
        }
        assert!(accepted > 0 && rejected > 0);
    }

    #[test]
    fn empty_tree_and_known_roots() {
        // RFC 6962 test data: the empty root and the root of the one-leaf tree of "".
        assert_eq!(
            BASE64.encode(&empty_root()),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(
            BASE64.encode(&leaf_hash(b"")),
            "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0="
        );
        assert_eq!(Frontier::new().root(), empty_root());
    }

    // ----- against a naive recursive reference -----

    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn path_ref(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n as u64) as usize;
        if m < k {
            let mut p = path_ref(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = path_ref(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    fn subproof_ref(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if whole { Vec::new() } else { vec![mth(leaves)] };
        }
        let k = split(n as u64) as usize;
        if m <= k {
            let mut p = subproof_ref(m, &leaves[..k], whole);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = subproof_ref(m - k, &leaves[k..], false);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    /// A tree grown through the frontier, keeping every node it completes, as the store does.
    struct Grown {
        leaves: Vec<Hash>,
        roots: Vec<Hash>,
        nodes: HashMap<NodeId, Hash>,
    }

    fn grow(n: usize) -> Grown {
        let mut frontier = Frontier::new();
        let mut grown = Grown {
            leaves: Vec::new(),
            roots: vec![frontier.root()],
            nodes: HashMap::new(),
        };
        for i in 0..n {
            let leaf = leaf_hash(format!("entry {i}").as_bytes());
            grown.leaves.push(leaf);
            grown.nodes.extend(frontier.push(leaf));
            grown.roots.push(frontier.root());
        }
        grown
    }

    fn log2_ceil(n: u64) -> usize {
        (64 - n.leading_zeros()) as usize
    }

    #[test]
    fn frontier_proofs_and_roots_match_the_reference_for_every_size_up_to_64() {
        let grown = grow(64);
        for n in 1..=64usize {
            let leaves = &grown.leaves[..n];
            let root = mth(leaves);
            assert_eq!(grown.roots[n], root, "root of {n}");
            let restored = Frontier::from_hashes(
                n as u64,
                Frontier::positions(n as u64)
                    .iter()
                    .map(|id| grown.nodes[id])
                    .collect(),
            )
            .unwrap();
            assert_eq!(restored.root(), root, "restored root of {n}");
            let from_nodes = root_from(n as u64, |id| Ok::<_, RangeError>(grown.nodes[&id]));
            assert_eq!(from_nodes, Ok(root));

            for m in 0..n {
                let mut reads = 0;
                let proof = inclusion_proof(m as u64, n as u64, |id| {
                    reads += 1;
                    grown.nodes.get(&id).copied().ok_or(RangeError::EmptyFrom)
                })
                .unwrap();
                assert_eq!(proof, path_ref(m, leaves), "inclusion {m} in {n}");
                assert!(
                    reads <= 2 * log2_ceil(n as u64),
                    "{reads} reads for {m} in {n}"
                );
                assert_eq!(
                    inclusion_nodes(m as u64, n as u64).unwrap().len(),
                    reads,
                    "each node read once"
                );
                verify_inclusion(m as u64, n as u64, &leaves[m], &proof, &root).unwrap();
                let wrong = leaf_hash(b"not in the log");
                assert!(verify_inclusion(m as u64, n as u64, &wrong, &proof, &root).is_err());
            }

            for m in 1..=n {
                let mut reads = 0;
                let proof = consistency_proof(m as u64, n as u64, |id| {
                    reads += 1;
                    grown.nodes.get(&id).copied().ok_or(RangeError::EmptyFrom)
                })
                .unwrap();
                assert_eq!(
                    proof,
                    subproof_ref(m, leaves, true),
                    "consistency {m} to {n}"
                );
                assert!(reads <= 2 * log2_ceil(n as u64) + 1, "{reads} reads");
                verify_consistency(m as u64, n as u64, &proof, &grown.roots[m], &root).unwrap();
                if m < n {
                    let other = grown.roots[m - 1];
                    assert!(verify_consistency(m as u64, n as u64, &proof, &other, &root).is_err());
                }
            }
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        let never = |_id: NodeId| -> Result<Hash, RangeError> { panic!("no read expected") };
        assert_eq!(
            inclusion_proof(3, 3, never),
            Err(RangeError::Index { index: 3, size: 3 })
        );
        assert_eq!(
            consistency_proof(5, 4, never),
            Err(RangeError::Sizes { from: 5, to: 4 })
        );
        assert_eq!(consistency_proof(0, 4, never), Err(RangeError::EmptyFrom));
        assert_eq!(consistency_proof(4, 4, never), Ok(Vec::new()));
    }

    #[test]
    fn frontier_positions_follow_the_bits_of_the_size() {
        assert_eq!(Frontier::positions(0), vec![]);
        assert_eq!(
            Frontier::positions(6),
            vec![NodeId::new(2, 0), NodeId::new(1, 2)]
        );
        assert_eq!(
            Frontier::positions(7),
            vec![NodeId::new(2, 0), NodeId::new(1, 2), NodeId::new(0, 6)]
        );
        assert!(Frontier::from_hashes(6, vec![[0; 32]]).is_none());
    }

    #[test]
    fn an_export_rederives_the_root() {
        let entries: Vec<Vec<u8>> = (0..10).map(|i| vec![i; 3]).collect();
        let grown_root = {
            let mut f = Frontier::new();
            for e in &entries {
                f.push(leaf_hash(e));
            }
            f.root()
        };
        assert_eq!(
            root_of_entries(entries.iter().map(Vec::as_slice)),
            grown_root
        );
    }
}
