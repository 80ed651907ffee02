//! `ledger`: serve the API, apply migrations, mint tokens, manage agencies.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ledger_api::auth::Keys;
use ledger_api::config::{DatabaseArgs, SecretArgs, ServeConfig};
use ledger_api::startup::{self, migrate_database, StartError};
use ledger_domain::Role;
use ledger_infra::SystemClock;
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
    /// Rebuild a projection (inventory, views, audit) from position 0 while
    /// the service keeps running, then swap it in; shows progress.
    Replay {
        name: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Publish fresh availability snapshots to the channels: one property,
    /// one agency, or every property; shows progress. A serving process
    /// (its NATS publisher) does the publishing.
    Resync {
        #[arg(long)]
        agency: Option<Uuid>,
        #[arg(long)]
        property: Option<Uuid>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Print the events published on NATS as they arrive, one CloudEvent
    /// JSON document per line.
    Tail(TailArgs),
    /// Create, suspend or reinstate an agency, or set its features (the
    /// same code as the /ops/agencies routes).
    Agency {
        #[command(subcommand)]
        action: AgencyAction,
    },
    /// Print the nats-server `users` entry of one agency's adapters: they
    /// consume that agency's events through their own durables and publish
    /// nothing else (docs/security-nats.md).
    NatsPermissions(NatsPermissionsArgs),
    /// The iCal channel (docs/ical.md).
    Ical {
        #[command(subcommand)]
        action: IcalAction,
    },
}

#[derive(Subcommand)]
enum IcalAction {
    /// Make a property's imported blocks match a channel's iCal feed once;
    /// prints the report as JSON.
    Import {
        #[arg(long)]
        property: Uuid,
        /// An http(s) URL, a file:// URL or a file path.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    secret: SecretArgs,
    /// The token's agency; required for every role but `operator`, who has none.
    #[arg(long)]
    agency: Option<Uuid>,
    #[arg(long, value_parser = parse_role)]
    role: Role,
    #[arg(long)]
    sub: String,
    /// Lifetime such as 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
}

#[derive(clap::Args)]
struct NatsPermissionsArgs {
    #[arg(long)]
    agency: Uuid,
    /// The NATS user name; default `agency-<agency>`.
    #[arg(long)]
    user: Option<String>,
    /// The password; default a random one, printed in the block.
    #[arg(long, env = "LEDGER_NATS_AGENCY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A durable consumer the adapters bind (`Binding::for_agency(agency,
    /// NAME)` names it `agency-<agency>-NAME`); repeat for several.
    #[arg(long = "durable", value_name = "NAME", default_value = "adapter")]
    durables: Vec<String>,
}

#[derive(clap::Args)]
struct TailArgs {
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Only this agency's events.
    #[arg(long)]
    agency: Option<Uuid>,
    /// Only this property's events.
    #[arg(long)]
    property: Option<Uuid>,
    /// Start from log position N: the stream is read from the oldest event it
    /// still holds and events with `ledgerposition` below N are skipped.
    /// Without it, only events published from now on.
    #[arg(long, value_name = "N")]
    from_position: Option<i64>,
}

#[derive(Subcommand)]
enum AgencyAction {
    /// Create an agency's record (or name one its first token created).
    Create {
        /// Chosen by the service when left out.
        #[arg(long)]
        id: Option<Uuid>,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Show an agency's record as JSON.
    Show {
        agency: Uuid,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    Suspend(StatusArgs),
    Reinstate(StatusArgs),
    /// Turn an agency's features on or off.
    Features {
        agency: Uuid,
        #[arg(long)]
        ical_export: Option<bool>,
        #[arg(long)]
        ical_import: Option<bool>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

// `ledger agency suspend|reinstate AGENCY [--reason ...]`. No doc comment:
// clap would show it as both subcommands' help.
#[derive(Args)]
struct StatusArgs {
    agency: Uuid,
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    database: DatabaseArgs,
}

fn parse_role(value: &str) -> Result<Role, String> {
    Role::parse(value)
        .ok_or_else(|| "one of admin, manager, staff, owner, accountant, operator".into())
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
            let app = startup::spawn(*config, SystemClock::shared()).await?;
            app.run_until(startup::shutdown_signal()).await?;
        }
        Commands::Migrate(database) => {
            ledger_infra::telemetry::init("text");
            migrate_database(&database).await?;
            println!("migrations applied");
        }
        Commands::Token(args) => {
            let agency = match (args.agency, args.role.has_agency()) {
                (Some(agency), true) => agency,
                (_, false) => Uuid::nil(),
                (None, true) => {
                    return Err("--agency is required for every role but operator".into())
                }
            };
            let keys = Keys::new(args.secret.jwt_secret.expose_secret().as_bytes());
            println!("{}", keys.mint(agency, args.role, &args.sub, args.ttl));
        }
        Commands::Replay { name, database } => replay(&name, database).await?,
        Commands::Resync {
            agency,
            property,
            database,
        } => resync(agency, property, database).await?,
        Commands::Tail(args) => tail(args).await?,
        Commands::Agency { action } => agency(action).await?,
        Commands::NatsPermissions(args) => print!("{}", nats_permissions(args)),
        Commands::Ical { action } => ical(action).await?,
    }
    Ok(())
}

fn nats_permissions(args: NatsPermissionsArgs) -> String {
    let agency = args.agency;
    let user = args.user.unwrap_or_else(|| format!("agency-{agency}"));
    let password = args
        .password
        .unwrap_or_else(|| format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()));
    let durables: Vec<String> = args
        .durables
        .iter()
        .map(|name| ledger_infra::channel::agency_durable(agency, name))
        .collect();
    ledger_infra::nats::agency_permissions(agency, &user, &password, &durables)
}

async fn tail(args: TailArgs) -> Result<(), StartError> {
    use ledger_infra::channel::Follower;

    let client = ledger_infra::nats::connect_now(&args.nats_url, "ledger-tail").await?;
    let mut events =
        Follower::open(&client, args.agency, args.property, args.from_position).await?;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => println!("{}", serde_json::to_string(&event)?),
            Err(error) => eprintln!("ledger tail: {error}"),
        }
    }
    Ok(())
}

async fn ical(action: IcalAction) -> Result<(), StartError> {
    let IcalAction::Import {
        property,
        url,
        database,
    } = action;
    ledger_infra::telemetry::init("text");
    migrate_database(&database).await?;
    let pool = ledger_infra::connect(&database.database_url, 2)?;
    let bus = ledger_infra::CommandBus::new(ledger_infra::EventStore::new(pool));
    let report =
        ledger_projections::jobs::ical_import::import(&bus, &SystemClock, property, &url, true)
            .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(problems) = report.problems() {
        eprintln!("ledger ical import: {problems}");
    }
    Ok(())
}

/// `ledger agency ...`: the same functions as the /ops/agencies routes; the
/// change is recorded in the agency history as made by `cli`, and every
/// serving process picks it up within 2 s.
async fn agency(action: AgencyAction) -> Result<(), StartError> {
    use ledger_infra::agencies::{self, Change};

    const BY: &str = "cli";
    let connect = |database: &DatabaseArgs| ledger_infra::connect(&database.database_url, 1);
    let change = |agency, change, database: DatabaseArgs| async move {
        Ok::<_, StartError>(agencies::change(&connect(&database)?, agency, change, BY).await?)
    };
    let agency = match action {
        AgencyAction::Create { id, name, database } => {
            let pool = connect(&database)?;
            let id = id.unwrap_or_else(Uuid::now_v7);
            agencies::create(&pool, id, &name, BY).await?.0
        }
        AgencyAction::Show { agency, database } => agencies::get(&connect(&database)?, agency)
            .await?
            .ok_or_else(|| format!("agency {agency} has no record"))?,
        AgencyAction::Suspend(StatusArgs {
            agency,
            reason,
            database,
        }) => change(agency, Change::Suspend { reason }, database).await?,
        AgencyAction::Reinstate(StatusArgs {
            agency,
            reason,
            database,
        }) => change(agency, Change::Reinstate { reason }, database).await?,
        AgencyAction::Features {
            agency,
            ical_export,
            ical_import,
            database,
        } => {
            let features = Change::SetFeatures {
                ical_export,
                ical_import,
            };
            change(agency, features, database).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&agency)?);
    Ok(())
}

/// Runs a replay in this process, drawing its progress (rate and ETA) from
/// the same `projection_replays` row the HTTP route reports.
async fn replay(name: &str, database: DatabaseArgs) -> Result<(), StartError> {
    use indicatif::{ProgressBar, ProgressStyle};
    use ledger_projections::{replay, Projection};

    let projection = Projection::parse(name).ok_or_else(|| {
        format!(
            "{name:?} is not a projection; they are {}",
            Projection::ALL.map(|p| p.name()).join(", ")
        )
    })?;
    migrate_database(&database).await?;
    let pool = ledger_infra::connect(&database.database_url, 4)?;
    let id = replay::start(&pool, projection).await?;
    let worker = {
        let pool = pool.clone();
        tokio::spawn(async move { replay::run(&pool, projection, id).await })
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg:>9} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar.set_message(name.to_owned());
    while !worker.is_finished() {
        if let Some(progress) = replay::progress(&pool, projection).await? {
            bar.set_length(progress.total.max(0) as u64);
            bar.set_position(progress.processed.max(0) as u64);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcome = worker.await?;
    let progress = replay::progress(&pool, projection).await?;
    bar.finish_and_clear();
    outcome?;
    if let Some(p) = progress {
        println!(
            "{name}: replayed {} events in {:.1} s ({} events/s), swapped in",
            p.processed,
            p.finished_at
                .map(|f| (f - p.started_at).num_milliseconds() as f64 / 1000.0)
                .unwrap_or_default(),
            p.events_per_sec
        );
    }
    Ok(())
}

/// Starts a resync job (the same as `POST /ops/resync`) and follows its
/// progress until every snapshot is published.
async fn resync(
    agency: Option<Uuid>, property: Option<Uuid>, database: DatabaseArgs,
) -> Result<(), StartError> {
    use indicatif::{ProgressBar, ProgressStyle};
    use ledger_infra::resync;

    migrate_database(&database).await?;
    let pool = ledger_infra::connect(&database.database_url, 2)?;
    let job = resync::start_job(&pool, agency, property).await?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg:>9} [{bar:40}] {pos}/{len} properties  {per_sec}  ETA {eta}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar.set_message("resync");
    let progress = loop {
        let Some(progress) = resync::progress(&pool, job).await? else {
            return Err(format!("resync job {job} has gone").into());
        };
        bar.set_length(progress.total.max(0) as u64);
        bar.set_position(progress.processed.max(0) as u64);
        if progress.finished_at.is_some() {
            break progress;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    println!(
        "resync {job}: published {} snapshots in {:.1} s",
        progress.processed,
        progress
            .finished_at
            .map(|f| (f - progress.started_at).num_milliseconds() as f64 / 1000.0)
            .unwrap_or_default()
    );
    Ok(())
}
