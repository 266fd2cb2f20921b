//! `trias audit`: checks the auditor's log without trusting the auditor. A checkpoint is
//! believed only if it carries a valid signature by the verifier key the user holds; a new
//! checkpoint only if the auditor proves it extends one the user saved earlier; and with
//! `--full`, the whole tree is re-derived from an export and its root compared with the
//! signed one. The Merkle and signed-note code is the auditor's own (`trias_auditor::merkle`,
//! `trias_auditor::checkpoint`), so the CLI and the auditor cannot disagree on the format.
//!
//! Exit codes are part of the interface: 0 verified, 1 verification failed, 2 usage or
//! connection errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use data_encoding::BASE64;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use trias_auditor::checkpoint::{CheckpointBody, SigningKey, Verifier};
use trias_auditor::merkle::{Frontier, Hash, empty_root, leaf_hash, verify_consistency};
use trias_proto::v1::auditor_client::AuditorClient;
use trias_proto::v1::{ExportRequest, GetCheckpointRequest, GetConsistencyProofRequest};
use trias_runtime::access::Bearer;

/// Exit code: everything checked verified.
pub const EXIT_VERIFIED: u8 = 0;
/// Exit code: a check failed — a bad signature, an inconsistent log, a tampered entry.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command could not run — bad arguments, unreadable files, no auditor.
pub const EXIT_USAGE: u8 = 2;

/// Logs at least this long get a progress bar while their tree is re-derived.
const PROGRESS_FROM: u64 = 100_000;
/// A frontier is kept every this many leaves while re-deriving, so that a mismatch can be
/// traced to the first differing entry by re-reading one stretch at a time.
const SNAPSHOT_EVERY: u64 = 4096;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  verified
  1  verification failed: a bad or missing signature, a log inconsistent with the saved
     checkpoint, or a tree that does not re-derive to the signed root
  2  usage or connection error: nothing was verified";

/// The `trias audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the auditor's latest checkpoint with its public key, and optionally its
    /// consistency with a checkpoint saved earlier and the whole tree from an export.
    #[command(after_help = EXIT_CODES_HELP)]
    Verify(VerifyArgs),
    /// Print the verifier key of a local auditor, read from its checkpoint key file.
    Key(KeyArgs),
    /// Search the log: filter by subject, client, token, family, audience, action, object,
    /// decision, reason, kind and time; a table, or JSON lines with `--json`.
    #[command(after_help = crate::remote::EXIT_CODES_HELP)]
    Query(Box<crate::audit_query::QueryArgs>),
    /// Print alerts as the auditor raises them (refresh reuse, duty conflicts, tokens never
    /// issued, wrong audiences, sequence gaps, denial bursts), after replaying earlier ones.
    #[command(after_help = crate::remote::EXIT_CODES_HELP)]
    Watch(crate::audit_query::WatchArgs),
}

/// `trias audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The auditor's gRPC address.
    #[arg(
        long,
        env = "TRIAS_AUDITOR_GRPC",
        default_value = "http://127.0.0.1:7421",
        value_name = "URL"
    )]
    pub auditor: String,
    /// The auditor's verifier key (`<name>+<key hash>+<base64 key>`, as `trias audit key`
    /// prints it), or `@FILE` to read it from a file. Obtain it out of band: a key fetched
    /// from the auditor itself proves nothing.
    #[arg(long, env = "TRIAS_AUDIT_KEY", value_name = "KEY|@FILE")]
    pub key: String,
    /// A checkpoint note saved earlier (with `--save`): the new checkpoint must extend it,
    /// proven with a consistency proof.
    #[arg(long, value_name = "FILE")]
    pub previous: Option<PathBuf>,
    /// Write the verified checkpoint note here, to pass as `--previous` next time.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Also export every entry up to the checkpoint, re-derive the tree's root from the
    /// entries and compare it with the signed root (reads the whole log).
    #[arg(long)]
    pub full: bool,
    /// Verify a saved checkpoint note offline, against the key only (no auditor contacted).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["auditor", "previous", "full"])]
    pub checkpoint_file: Option<PathBuf>,
    /// The PKI directory (`trias pki init`): the CLI connects with mutual TLS as
    /// `spiffe://trias/cli` using `ca.pem`, `cli.pem` and `cli-key.pem` from it, and requires
    /// the auditor to prove `spiffe://trias/auditor`. Without `cli.pem` there it connects in
    /// plain text (an auditor in development mode).
    #[arg(
        long,
        env = "TRIAS_PKI",
        default_value = ".trias/pki",
        value_name = "DIR"
    )]
    pub pki: PathBuf,
    /// A security analyst's access token (`audit:read` at audience `auditor`), which the
    /// auditor needs for proofs and exports (`--previous`, `--full`); the latest checkpoint
    /// alone is public.
    #[arg(
        long,
        env = "TRIAS_AUDIT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: Option<String>,
}

/// `trias audit key`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The data directory of `trias up` (whose auditor keeps its key in `auditor/`), or the
    /// auditor's own data directory.
    #[arg(long, default_value = ".trias")]
    pub data_dir: PathBuf,
    /// The checkpoint origin the auditor is configured with, which names its key.
    #[arg(long, default_value = "trias.local/audit")]
    pub origin: String,
}

/// Why `trias audit` did not answer "verified".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A check failed: the message says exactly which.
    #[error("verification failed: {0}")]
    Failed(String),
    /// Nothing could be checked: bad arguments, unreadable files, an unreachable auditor.
    #[error("{0}")]
    Usage(String),
    /// The auditor refused a query (no or a wrong token, a bad filter).
    #[error("{0}")]
    Refused(String),
}

impl AuditError {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            AuditError::Failed(_) | AuditError::Refused(_) => EXIT_FAILED,
            AuditError::Usage(_) => EXIT_USAGE,
        }
    }
}

fn failed(message: impl Into<String>) -> AuditError {
    AuditError::Failed(message.into())
}

fn usage(message: impl Into<String>) -> AuditError {
    AuditError::Usage(message.into())
}

/// Runs a `trias audit` command for the binary: reports on stdout, errors on stderr, and
/// returns the exit code.
pub async fn main(command: AuditCommand) -> ExitCode {
    let mut stdout = std::io::stdout();
    match run(command, &mut stdout).await {
        Ok(()) => ExitCode::from(EXIT_VERIFIED),
        Err(error) => {
            eprintln!("trias audit: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// `trias audit …` as a command line (`args` without the program name and `audit`), the
/// way tests drive it: a parse error is a usage error, as in the binary.
pub async fn run_args<I, T>(args: I, out: &mut dyn Write) -> Result<(), AuditError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    #[derive(Debug, Parser)]
    #[command(name = "trias audit")]
    struct AuditCli {
        #[command(subcommand)]
        command: AuditCommand,
    }
    let args = std::iter::once(std::ffi::OsString::from("trias audit"))
        .chain(args.into_iter().map(Into::into));
    let cli = AuditCli::try_parse_from(args).map_err(|e| usage(e.to_string()))?;
    run(cli.command, out).await
}

/// Runs a `trias audit` command, writing its report to `out`.
pub async fn run(command: AuditCommand, out: &mut dyn Write) -> Result<(), AuditError> {
    match command {
        AuditCommand::Verify(args) => verify(&args, out).await,
        AuditCommand::Key(args) => print_key(&args, out),
        AuditCommand::Query(args) => crate::audit_query::query(*args, out)
            .await
            .map_err(from_cli_error),
        AuditCommand::Watch(args) => crate::audit_query::watch(args, out)
            .await
            .map_err(from_cli_error),
    }
}

/// A query's refusal fails the command (exit code 1); no answer is a usage error (2).
fn from_cli_error(error: crate::remote::CliError) -> AuditError {
    match error {
        crate::remote::CliError::Refused(message) => AuditError::Refused(message),
        crate::remote::CliError::Usage(message) => AuditError::Usage(message),
    }
}

fn say(out: &mut dyn Write, line: std::fmt::Arguments<'_>) -> Result<(), AuditError> {
    writeln!(out, "{line}").map_err(|e| usage(format!("cannot write the report: {e}")))
}

fn b64(hash: &[u8]) -> String {
    BASE64.encode(hash)
}

fn read_text(path: &Path, what: &str) -> Result<String, AuditError> {
    std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The verifier key from `--key`: the key itself, or `@FILE`.
fn load_key(key: &str) -> Result<Verifier, AuditError> {
    let (text, source) = match key.strip_prefix('@') {
        Some(path) => (
            read_text(Path::new(path), "verifier key file")?,
            format!("the verifier key in {path}"),
        ),
        None => (key.to_owned(), "--key".to_owned()),
    };
    Verifier::parse(text.trim()).map_err(|e| usage(format!("{source}: {e}")))
}

/// Writes `note` to `path` through a temporary file, so a crash never leaves half a note.
fn save_note(path: &Path, note: &str) -> Result<(), AuditError> {
    let failed_to = |e: std::io::Error| usage(format!("cannot save to {}: {e}", path.display()));
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, note).map_err(failed_to)?;
    std::fs::rename(&temporary, path).map_err(failed_to)
}

fn describe(body: &CheckpointBody) -> String {
    format!(
        "{}, size {}, root {}",
        body.origin,
        body.tree_size,
        b64(&body.root)
    )
}

/// A connection-level failure is a usage error (2): nothing was verified. Any other status
/// while asking for a proof means the auditor cannot prove what it signed (1).
fn rpc_error(what: &str, proving: bool) -> impl Fn(Status) -> AuditError + '_ {
    move |status| {
        let connection = matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Unimplemented
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::ResourceExhausted
        );
        let mut message = format!("{what}: {} ({:?})", status.message(), status.code());
        if matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ) {
            message.push_str(
                "; proofs and exports need a security analyst's token (--token or TRIAS_AUDIT_TOKEN)",
            );
        }
        if proving && !connection {
            failed(format!("the auditor cannot provide {message}"))
        } else {
            usage(format!("auditor request failed, {message}"))
        }
    }
}

/// An auditor client that sends the analyst's token, if one was given.
type Client = AuditorClient<InterceptedService<Channel, Bearer>>;

async fn connect(url: &str, pki: &Path, token: Option<&str>) -> Result<Client, AuditError> {
    crate::remote::auditor_client(url, pki, token)
        .await
        .map_err(from_cli_error)
}

async fn verify(args: &VerifyArgs, out: &mut dyn Write) -> Result<(), AuditError> {
    let verifier = load_key(&args.key)?;
    if let Some(path) = &args.checkpoint_file {
        let note = read_text(path, "checkpoint file")?;
        let body = verifier
            .verify(&note)
            .map_err(|e| failed(format!("the checkpoint in {}: {e}", path.display())))?;
        say(out, format_args!("checkpoint: {}", describe(&body)))?;
        say(out, format_args!("signature: valid ({verifier})"))?;
        if let Some(save) = &args.save {
            save_note(save, &note)?;
            say(out, format_args!("saved: {}", save.display()))?;
        }
        return say(out, format_args!("verified"));
    }

    // The saved checkpoint is checked first: if it is not signed by this key, nothing the
    // auditor says can be compared with it.
    let previous = match &args.previous {
        Some(path) => {
            let note = read_text(path, "previous checkpoint")?;
            let body = verifier.verify(&note).map_err(|e| {
                failed(format!(
                    "the previous checkpoint in {} does not verify: {e}",
                    path.display()
                ))
            })?;
            Some((path, body))
        }
        None => None,
    };

    let mut client = connect(&args.auditor, &args.pki, args.token.as_deref()).await?;
    let checkpoint = client
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .map_err(rpc_error("GetCheckpoint", false))?
        .into_inner();
    let body = verifier
        .verify(&checkpoint.note)
        .map_err(|e| failed(format!("the auditor's latest checkpoint: {e}")))?;
    if body.tree_size != checkpoint.tree_size || body.root.as_slice() != checkpoint.root_hash {
        return Err(failed(format!(
            "the auditor's checkpoint fields (size {}, root {}) disagree with its signed note ({})",
            checkpoint.tree_size,
            b64(&checkpoint.root_hash),
            describe(&body)
        )));
    }
    say(out, format_args!("checkpoint: {}", describe(&body)))?;
    say(out, format_args!("signature: valid ({verifier})"))?;

    if let Some((path, old)) = previous {
        check_consistency(&mut client, &old, &body, path).await?;
        let added = body.tree_size - old.tree_size;
        say(
            out,
            format_args!(
                "consistency: extends the saved checkpoint of size {} ({}) by {added} entries",
                old.tree_size,
                path.display()
            ),
        )?;
    }

    if args.full {
        let started = Instant::now();
        rederive(&mut client, &body).await?;
        say(
            out,
            format_args!(
                "full: the root re-derived from {} exported entries matches ({:.1} s)",
                body.tree_size,
                started.elapsed().as_secs_f64()
            ),
        )?;
    }

    if let Some(save) = &args.save {
        save_note(save, &checkpoint.note)?;
        say(out, format_args!("saved: {}", save.display()))?;
    }
    say(out, format_args!("verified"))
}

/// Checks that the checkpoint `new` extends the saved `old`: sizes never go backwards, the
/// same size has the same root, and a larger tree comes with a valid consistency proof.
async fn check_consistency(
    client: &mut Client,
    old: &CheckpointBody,
    new: &CheckpointBody,
    path: &Path,
) -> Result<(), AuditError> {
    let (from, to) = (old.tree_size, new.tree_size);
    if from > to {
        return Err(failed(format!(
            "the log went backwards: the saved checkpoint ({}) has size {from}, the auditor \
             now signs size {to}",
            path.display()
        )));
    }
    if from == to {
        if old.root != new.root {
            return Err(failed(format!(
                "the auditor signed two different roots for size {to}: {} in the saved \
                 checkpoint ({}), {} now (a forked log)",
                b64(&old.root),
                path.display(),
                b64(&new.root)
            )));
        }
        return Ok(());
    }
    if from == 0 {
        // Every tree extends the empty tree; there is nothing to prove.
        return Ok(());
    }
    let proof = client
        .get_consistency_proof(GetConsistencyProofRequest {
            from_size: from,
            to_size: to,
        })
        .await
        .map_err(rpc_error(
            "a consistency proof from the saved checkpoint",
            true,
        ))?
        .into_inner();
    if proof.from_size != from || proof.to_size != to {
        return Err(failed(format!(
            "asked for a consistency proof from size {from} to {to}, the auditor answered one \
             from {} to {}",
            proof.from_size, proof.to_size
        )));
    }
    verify_consistency(from, to, &proof.hashes, &old.root, &new.root).map_err(|e| {
        failed(format!(
            "the checkpoint of size {to} is not consistent with the saved checkpoint of size \
             {from} ({}): {e}",
            path.display()
        ))
    })
}

fn progress_bar(size: u64) -> ProgressBar {
    if size < PROGRESS_FROM {
        return ProgressBar::hidden();
    }
    // Drawn only when stderr is a terminal, so scripts and logs get no control codes.
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "re-deriving the root {wide_bar} {human_pos}/{human_len} entries ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Streams every entry up to the checkpoint's size and re-derives the root leaf by leaf
/// through a frontier (memory grows with log n, plus one small frontier per
/// [`SNAPSHOT_EVERY`] entries kept to locate a mismatch).
async fn rederive(client: &mut Client, body: &CheckpointBody) -> Result<(), AuditError> {
    let size = body.tree_size;
    if size == 0 {
        return if body.root == empty_root() {
            Ok(())
        } else {
            Err(failed(
                "the signed root of the empty log is not the hash of nothing",
            ))
        };
    }
    let bar = progress_bar(size);
    let mut stream = client
        .export(ExportRequest {
            from_index: 0,
            to_index: size,
        })
        .await
        .map_err(rpc_error("Export", false))?
        .into_inner();
    let mut frontier = Frontier::new();
    let mut snapshots = Vec::new();
    while let Some(entry) = stream.message().await.map_err(rpc_error("Export", false))? {
        let expected = frontier.size();
        if entry.index != expected || expected >= size {
            bar.finish_and_clear();
            return Err(failed(format!(
                "the export sent entry {} where entry {expected} of {size} was expected",
                entry.index
            )));
        }
        if expected.is_multiple_of(SNAPSHOT_EVERY) {
            snapshots.push(frontier.clone());
        }
        frontier.push(leaf_hash(&entry.leaf));
        if frontier.size().is_multiple_of(1024) {
            bar.set_position(frontier.size());
        }
    }
    bar.finish_and_clear();
    if frontier.size() != size {
        return Err(failed(format!(
            "the export ended after {} entries; the checkpoint covers {size}",
            frontier.size()
        )));
    }
    let root = frontier.root();
    if root == body.root {
        return Ok(());
    }
    let located = match first_mismatch(client, &snapshots, size, &body.root).await {
        Ok(index) => format!("; entry {index} is the first that differs from the signed log"),
        Err(e) => format!("; the first differing entry could not be located: {e}"),
    };
    Err(failed(format!(
        "the root re-derived from the {size} exported entries ({}) is not the signed root ({}){located}",
        b64(&root),
        b64(&body.root),
    )))
}

/// The first exported entry that is not in the signed tree: the smallest prefix whose root
/// the auditor cannot prove consistent with the signed root ends with it. A prefix of
/// authentic entries always has a valid proof and one containing a changed entry never
/// does, so a binary search over prefix sizes finds it in O(log n) proofs, each prefix root
/// rebuilt from the nearest kept frontier and at most [`SNAPSHOT_EVERY`] re-exported entries.
async fn first_mismatch(
    client: &mut Client,
    snapshots: &[Frontier],
    size: u64,
    signed_root: &Hash,
) -> Result<u64, AuditError> {
    // The prefix of `size` entries is known not to match; find the smallest that does not.
    let (mut low, mut high) = (1, size);
    while low < high {
        let middle = low + (high - low) / 2;
        if prefix_is_consistent(client, snapshots, middle, size, signed_root).await? {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low - 1)
}

async fn prefix_is_consistent(
    client: &mut Client,
    snapshots: &[Frontier],
    prefix: u64,
    size: u64,
    signed_root: &Hash,
) -> Result<bool, AuditError> {
    let slot = usize::try_from(prefix / SNAPSHOT_EVERY).unwrap_or(usize::MAX);
    let mut frontier = snapshots
        .get(slot)
        .cloned()
        .ok_or_else(|| usage(format!("no frontier kept for size {prefix}")))?;
    if frontier.size() < prefix {
        let mut stream = client
            .export(ExportRequest {
                from_index: frontier.size(),
                to_index: prefix,
            })
            .await
            .map_err(rpc_error("Export", false))?
            .into_inner();
        while let Some(entry) = stream.message().await.map_err(rpc_error("Export", false))? {
            frontier.push(leaf_hash(&entry.leaf));
        }
    }
    let proof = client
        .get_consistency_proof(GetConsistencyProofRequest {
            from_size: prefix,
            to_size: size,
        })
        .await
        .map_err(rpc_error("a consistency proof", false))?
        .into_inner();
    Ok(frontier.size() == prefix
        && verify_consistency(prefix, size, &proof.hashes, &frontier.root(), signed_root).is_ok())
}

/// The key file of the auditor under `data_dir`: `trias up`'s layout first, then the
/// auditor's own data directory.
fn key_file(data_dir: &Path) -> Option<PathBuf> {
    [
        data_dir.join("auditor").join("checkpoint-key.pk8"),
        data_dir.join("checkpoint-key.pk8"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn print_key(args: &KeyArgs, out: &mut dyn Write) -> Result<(), AuditError> {
    let path = key_file(&args.data_dir).ok_or_else(|| {
        usage(format!(
            "no auditor checkpoint key in {} (looked for auditor/checkpoint-key.pk8 and \
             checkpoint-key.pk8)",
            args.data_dir.display()
        ))
    })?;
    let pkcs8 =
        std::fs::read(&path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let key = SigningKey::from_pkcs8(&args.origin, &pkcs8)
        .map_err(|e| usage(format!("{}: {e}", path.display())))?;
    say(out, format_args!("{}", key.verifier()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use trias_auditor::merkle::root_of_entries;

    fn signed(size: u64) -> (SigningKey, String) {
        let key =
            SigningKey::from_pkcs8("trias.test/audit", &SigningKey::generate_pkcs8().unwrap())
                .unwrap();
        let leaves: Vec<Vec<u8>> = (0..size).map(|i| i.to_be_bytes().to_vec()).collect();
        let note = key.sign(&CheckpointBody {
            origin: "trias.test/audit".into(),
            tree_size: size,
            root: root_of_entries(leaves.iter().map(Vec::as_slice)),
        });
        (key, note)
    }

    async fn offline(key: &str, file: &Path) -> (Result<(), AuditError>, String) {
        let mut out = Vec::new();
        let result = run_args(
            [
                "verify",
                "--key",
                key,
                "--checkpoint-file",
                file.to_str().unwrap(),
            ],
            &mut out,
        )
        .await;
        (result, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn a_saved_checkpoint_verifies_offline_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let (key, note) = signed(5);
        let file = dir.path().join("checkpoint");
        std::fs::write(&file, &note).unwrap();
        let (result, out) = offline(&key.verifier().to_string(), &file).await;
        assert_eq!(result, Ok(()));
        assert!(
            out.contains("size 5") && out.ends_with("verified\n"),
            "{out}"
        );

        // From a key file too.
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{}\n", key.verifier())).unwrap();
        let at = format!("@{}", key_file.display());
        assert_eq!(offline(&at, &file).await.0, Ok(()));

        let (other, _) = signed(5);
        let (result, _) = offline(&other.verifier().to_string(), &file).await;
        let error = result.unwrap_err();
        assert_eq!(error.exit_code(), EXIT_FAILED, "{error}");
        assert!(error.to_string().contains("no signature"), "{error}");

        std::fs::write(&file, note.replacen("\n5\n", "\n6\n", 1)).unwrap();
        let (result, _) = offline(&key.verifier().to_string(), &file).await;
        let error = result.unwrap_err();
        assert_eq!(error.exit_code(), EXIT_FAILED);
        assert!(error.to_string().contains("does not verify"), "{error}");
    }

    #[tokio::test]
    async fn bad_arguments_and_files_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = signed(1);
        let missing = dir.path().join("missing");
        let (result, _) = offline(&key.verifier().to_string(), &missing).await;
        assert_eq!(result.unwrap_err().exit_code(), EXIT_USAGE);
        let (result, _) = offline("not-a-key", &missing).await;
        assert_eq!(result.unwrap_err().exit_code(), EXIT_USAGE);
        let mut out = Vec::new();
        let error = run_args(
            ["verify", "--full", "--checkpoint-file", "x", "--key", "k"],
            &mut out,
        )
        .await
        .unwrap_err();
        assert_eq!(error.exit_code(), EXIT_USAGE, "{error}");
        let error = run_args(["verify"], &mut out).await.unwrap_err();
        assert!(error.to_string().contains("--key"), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_auditor_is_a_connection_error() {
        let (key, _) = signed(1);
        // Bind then drop a listener: nothing listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut out = Vec::new();
        let error = run_args(
            [
                "verify",
                "--auditor",
                &format!("http://127.0.0.1:{port}"),
                "--key",
                &key.verifier().to_string(),
            ],
            &mut out,
        )
        .await
        .unwrap_err();
        assert_eq!(error.exit_code(), EXIT_USAGE, "{error}");
        assert!(error.to_string().contains("cannot reach"), "{error}");
    }

    #[test]
    fn the_key_is_printed_from_the_auditor_key_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("auditor")).unwrap();
        let key_path = dir.path().join("auditor").join("checkpoint-key.pk8");
        let key = SigningKey::load_or_create(&key_path, "trias.local/audit").unwrap();
        let mut out = Vec::new();
        print_key(
            &KeyArgs {
                data_dir: dir.path().to_owned(),
                origin: "trias.local/audit".into(),
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}\n", key.verifier())
        );
        let error = print_key(
            &KeyArgs {
                data_dir: dir.path().join("nowhere"),
                origin: "trias.local/audit".into(),
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(error.exit_code(), EXIT_USAGE);
    }
}
