//! `trias admin`: the issuer's administration API from the command line — clients, users,
//! two-person role grants, signing keys. Every call needs an administrator's access token
//! from a login with a second factor (`trias token --login ... --totp ...` with the admin
//! scopes at the admin audience); the issuer has the validator decide it.

use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};
use data_encoding::BASE64URL_NOPAD;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use trias_proto::v1::issuer_client::IssuerClient;
use trias_proto::v1::{
    ApproveRoleGrantRequest, CreateUserRequest, GrantType, KeyAlgorithm, ListClientsRequest,
    ListKeysRequest, ListRoleGrantsRequest, ListUsersRequest, RegisterClientRequest,
    RequestRoleGrantRequest, RevokeRoleRequest, RoleGrant, RoleGrantState, RotateKeysRequest,
};
use trias_runtime::access::Bearer;

use crate::remote::{CliError, Services, usage};

/// `trias admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub services: Services,
    /// An administrator's access token (admin scopes at the admin audience, `acr=mfa`).
    #[arg(
        long,
        env = "TRIAS_ADMIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true,
        value_name = "TOKEN"
    )]
    pub token: String,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The `trias admin` subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// OAuth clients.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Users (passwords stored as argon2id; TOTP for a second factor).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Role grants: one administrator requests, a different one approves; no one grants a
    /// role to themselves, and the duty policy refuses conflicting roles at approval.
    #[command(subcommand)]
    Grants(GrantsCommand),
    /// Token-signing keys (only public parts are ever shown).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// List the registered clients.
    List,
    /// Register a client; its secret is shown once.
    Register {
        /// A human-readable name.
        #[arg(long)]
        name: String,
        /// A grant the client may use; repeat for several.
        #[arg(long = "grant", value_enum, required = true)]
        grants: Vec<GrantArg>,
        /// A scope the client may ask for; repeat for several.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An exact redirect URI (authorization_code); repeat for several.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// A public client: no secret, authorization_code with PKCE only.
        #[arg(long)]
        public: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List the users and their roles.
    List,
    /// Create a user with a random password (shown once), and a TOTP secret with `--totp`.
    Create {
        /// The new user's login name.
        #[arg(long)]
        username: String,
        /// Enrol a TOTP second factor (needed for scopes that require `acr=mfa`).
        #[arg(long)]
        totp: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List role grants.
    List {
        /// Only grants in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// Ask for a role to be granted to a user or client; another administrator approves.
    Request {
        /// A user id or client id.
        #[arg(long)]
        subject: String,
        /// The policy role to grant.
        #[arg(long)]
        role: String,
        /// Why: recorded in the audit log with the request.
        #[arg(long)]
        justification: String,
    },
    /// Approve a pending grant requested by another administrator.
    Approve {
        /// The grant's id, as `request` and `list` print it.
        id: String,
    },
    /// Take a role away from a subject.
    Revoke {
        /// A user id or client id.
        #[arg(long)]
        subject: String,
        /// The role to take away.
        #[arg(long)]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the signing keys: published, active, retiring.
    List,
    /// Create a new signing key: published at once, signing after the publication delay.
    Rotate {
        /// The new key's algorithm.
        #[arg(long, value_enum, default_value_t = AlgorithmArg::Eddsa)]
        algorithm: AlgorithmArg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GrantArg {
    ClientCredentials,
    AuthorizationCode,
    RefreshToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Pending,
    Approved,
    Expired,
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    Eddsa,
    Es256,
}

type Client = IssuerClient<InterceptedService<Channel, Bearer>>;

/// Runs an admin command, writing what it did to `out`.
pub async fn run(args: AdminArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let bearer = Bearer::new(Some(&args.token)).map_err(|e| usage(format!("--token: {e}")))?;
    let channel = args
        .services
        .channel("issuer", &args.services.issuer, "cli")
        .await?;
    let mut issuer: Client = IssuerClient::with_interceptor(channel, bearer);
    let refused = |s: tonic::Status| CliError::from_status("issuer", &s);
    let mut lines: Vec<String> = Vec::new();
    match args.command {
        AdminCommand::Clients(ClientsCommand::List) => {
            let clients = issuer
                .list_clients(ListClientsRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .clients;
            for c in clients {
                lines.push(format!(
                    "{}  {:<28}  {}{}  scopes: {}",
                    c.client_id,
                    c.name,
                    grants(&c.grant_types),
                    if c.public { "  (public)" } else { "" },
                    c.scopes.join(" ")
                ));
            }
        }
        AdminCommand::Clients(ClientsCommand::Register {
            name,
            grants: grant_args,
            scopes,
            redirect_uris,
            public,
        }) => {
            let made = issuer
                .register_client(RegisterClientRequest {
                    name,
                    redirect_uris,
                    grant_types: grant_args
                        .iter()
                        .map(|g| i32::from(grant_type(*g)))
                        .collect(),
                    scopes,
                    public,
                })
                .await
                .map_err(refused)?
                .into_inner();
            let client = made.client.unwrap_or_default();
            lines.push(format!("client_id      {}", client.client_id));
            if !made.client_secret.is_empty() {
                lines.push(format!(
                    "client_secret  {}  (shown once)",
                    made.client_secret
                ));
            }
        }
        AdminCommand::Users(UsersCommand::List) => {
            let users = issuer
                .list_users(ListUsersRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .users;
            for u in users {
                lines.push(format!(
                    "{}  {:<16}  roles: {}{}",
                    u.user_id,
                    u.username,
                    u.roles.join(" "),
                    if u.totp { "  (totp)" } else { "" }
                ));
            }
        }
        AdminCommand::Users(UsersCommand::Create { username, totp }) => {
            let password = random_password()?;
            let made = issuer
                .create_user(CreateUserRequest {
                    username,
                    password: password.clone(),
                    totp,
                })
                .await
                .map_err(refused)?
                .into_inner();
            let user = made.user.unwrap_or_default();
            lines.push(format!("user_id      {}", user.user_id));
            lines.push(format!("password     {password}  (shown once)"));
            if !made.totp_secret.is_empty() {
                lines.push(format!("totp secret  {}", made.totp_secret));
                lines.push(format!("totp uri     {}", made.totp_uri));
            }
        }
        AdminCommand::Grants(GrantsCommand::List { state }) => {
            let state = match state {
                None => RoleGrantState::Unspecified,
                Some(StateArg::Pending) => RoleGrantState::Pending,
                Some(StateArg::Approved) => RoleGrantState::Approved,
                Some(StateArg::Expired) => RoleGrantState::Expired,
                Some(StateArg::Refused) => RoleGrantState::Refused,
            };
            let found = issuer
                .list_role_grants(ListRoleGrantsRequest {
                    state: state.into(),
                })
                .await
                .map_err(refused)?
                .into_inner()
                .grants;
            lines.extend(found.iter().map(grant_line));
        }
        AdminCommand::Grants(GrantsCommand::Request {
            subject,
            role,
            justification,
        }) => {
            let grant = issuer
                .request_role_grant(RequestRoleGrantRequest {
                    subject,
                    role,
                    justification,
                })
                .await
                .map_err(refused)?
                .into_inner();
            lines.push(grant_line(&grant));
        }
        AdminCommand::Grants(GrantsCommand::Approve { id }) => {
            let grant = issuer
                .approve_role_grant(ApproveRoleGrantRequest { id })
                .await
                .map_err(refused)?
                .into_inner();
            lines.push(grant_line(&grant));
            if grant.state() == RoleGrantState::Refused {
                write_lines(out, &lines)?;
                return Err(CliError::Refused(
                    "issuer: the duty policy refused the grant".into(),
                ));
            }
        }
        AdminCommand::Grants(GrantsCommand::Revoke { subject, role }) => {
            issuer
                .revoke_role(RevokeRoleRequest {
                    subject: subject.clone(),
                    role: role.clone(),
                })
                .await
                .map_err(refused)?;
            lines.push(format!("role {role} revoked from {subject}"));
        }
        AdminCommand::Keys(KeysCommand::List) => {
            let keys = issuer
                .list_keys(ListKeysRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .keys;
            for k in keys {
                lines.push(format!(
                    "{}  {:<6}  activates {}  retires {}",
                    k.kid,
                    algorithm_name(k.algorithm),
                    k.activates_at
                        .map(|t| t.seconds.to_string())
                        .unwrap_or("-".into()),
                    k.retires_at
                        .map(|t| t.seconds.to_string())
                        .unwrap_or("-".into()),
                ));
            }
        }
        AdminCommand::Keys(KeysCommand::Rotate { algorithm }) => {
            let algorithm = match algorithm {
                AlgorithmArg::Eddsa => KeyAlgorithm::Eddsa,
                AlgorithmArg::Es256 => KeyAlgorithm::Es256,
            };
            let key = issuer
                .rotate_keys(RotateKeysRequest {
                    algorithm: algorithm.into(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            lines.push(format!(
                "new key {} ({}), signing from {} (Unix seconds)",
                key.kid,
                algorithm_name(key.algorithm),
                key.activates_at.map(|t| t.seconds).unwrap_or_default()
            ));
        }
    }
    write_lines(out, &lines)
}

fn write_lines(out: &mut dyn Write, lines: &[String]) -> Result<(), CliError> {
    for line in lines {
        writeln!(out, "{line}").map_err(|e| usage(format!("cannot write: {e}")))?;
    }
    Ok(())
}

fn grant_type(grant: GrantArg) -> GrantType {
    match grant {
        GrantArg::ClientCredentials => GrantType::ClientCredentials,
        GrantArg::AuthorizationCode => GrantType::AuthorizationCode,
        GrantArg::RefreshToken => GrantType::RefreshToken,
    }
}

fn grants(types: &[i32]) -> String {
    types
        .iter()
        .map(|t| {
            GrantType::try_from(*t)
                .map(|g| {
                    g.as_str_name()
                        .trim_start_matches("GRANT_TYPE_")
                        .to_lowercase()
                })
                .unwrap_or_else(|_| t.to_string())
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn algorithm_name(algorithm: i32) -> &'static str {
    match KeyAlgorithm::try_from(algorithm) {
        Ok(KeyAlgorithm::Eddsa) => "EdDSA",
        Ok(KeyAlgorithm::Es256) => "ES256",
        _ => "?",
    }
}

fn grant_line(grant: &RoleGrant) -> String {
    let state = grant
        .state()
        .as_str_name()
        .trim_start_matches("ROLE_GRANT_STATE_")
        .to_lowercase();
    format!(
        "{}  {:<9}  role {} for {}  requested by {}{}",
        grant.id,
        state,
        grant.role,
        grant.subject,
        grant.requested_by,
        if grant.approved_by.is_empty() {
            String::new()
        } else {
            format!(", approved by {}", grant.approved_by)
        }
    )
}

/// 24 random bytes, base64url: a password shown once to hand to the user.
fn random_password() -> Result<String, CliError> {
    let mut bytes = [0u8; 24];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| usage("no randomness for a password"))?;
    Ok(BASE64URL_NOPAD.encode(&bytes))
}
