//! `ledger`: serve the API, apply migrations, mint tokens, manage agencies.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ledger_api::auth::Keys;
use ledger_api::config::{DatabaseArgs, SecretArgs, ServeConfig};
use ledger_api::startup::{migrate_when_reachable, Application, StartError};
use ledger_domain::Role;
use secrecy::ExposeSecret;
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "ledger",
    version,
    about = "Booking Ledger: the system of record for booked nights"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Apply missing migrations and serve the HTTP API.
    Serve(Box<ServeConfig>),
    /// Apply missing migrations and exit.
    Migrate(DatabaseArgs),
    /// Mint a token signed with JWT_SECRET (development and ops).
    Token(TokenArgs),
    /// Suspend or reinstate an agency.
    Agency {
        #[command(subcommand)]
        action: AgencyAction,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    secret: SecretArgs,
    #[arg(long)]
    agency: Uuid,
    #[arg(long, value_parser = parse_role)]
    role: Role,
    #[arg(long)]
    sub: String,
    /// Lifetime such as 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
}

#[derive(Subcommand)]
enum AgencyAction {
    Suspend {
        agency: Uuid,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    Reinstate {
        agency: Uuid,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

fn parse_role(value: &str) -> Result<Role, String> {
    Role::parse(value).ok_or_else(|| "one of admin, manager, staff, owner, accountant".into())
}

fn parse_ttl(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| "a number and a unit: 90s, 30m, 1h, 7d")?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err("the unit is s, m, h or d".into()),
    };
    Ok(Duration::from_secs(number * seconds))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledger: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Commands) -> Result<(), StartError> {
    match command {
        Commands::Serve(config) => {
            ledger_infra::telemetry::init(&config.log_format);
            let app = Application::build(*config).await?;
            app.run_until_stopped().await?;
        }
        Commands::Migrate(database) => {
            ledger_infra::telemetry::init("text");
            let pool = ledger_infra::connect(&database.database_url, 2)?;
            migrate_when_reachable(&pool).await?;
            println!("migrations applied");
        }
        Commands::Token(args) => {
            let keys = Keys::new(args.secret.jwt_secret.expose_secret().as_bytes());
            println!("{}", keys.mint(args.agency, args.role, &args.sub, args.ttl));
        }
        Commands::Agency { action } => agency(action).await?,
    }
    Ok(())
}

async fn agency(action: AgencyAction) -> Result<(), StartError> {
    match action {
        AgencyAction::Suspend {
            agency,
            reason,
            database,
        } => {
            let pool = ledger_infra::connect(&database.database_url, 1)?;
            sqlx::query(
                "INSERT INTO agency_suspensions (agency_id, reason) VALUES ($1, $2)
                 ON CONFLICT (agency_id) DO UPDATE SET reason = EXCLUDED.reason",
            )
            .bind(agency)
            .bind(reason)
            .execute(&pool)
            .await?;
            println!("agency {agency} suspended");
        }
        AgencyAction::Reinstate { agency, database } => {
            let pool = ledger_infra::connect(&database.database_url, 1)?;
            sqlx::query("DELETE FROM agency_suspensions WHERE agency_id = $1")
                .bind(agency)
                .execute(&pool)
                .await?;
            println!("agency {agency} reinstated");
        }
    }
    Ok(())
}
