//! Value types of the booking domain: night ranges, guests, money, the
//! closed vocabularies (status, channel, block reason) and their checks.
//!
//! This is also where the ledger's value domain is defined, once: the dates
//! and texts every layer below the write side can hold. PostgreSQL refuses a
//! NUL inside `text` and `jsonb` and a `date` far outside the calendar, so a
//! command carrying one would be appended to the log and then stop every
//! projection that meets it. Commands are checked against this domain before
//! anything is decided; nothing outside it ever reaches the log.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::error::CalendarError;

/// The longest stay or block the ledger accepts, in nights.
pub const MAX_NIGHTS: i64 = 366;

/// A half-open range of nights `[start, end)`: the `end` day is free for the
/// next arrival. Always non-empty and at most [`MAX_NIGHTS`] long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Nights {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl Nights {
    /// Checks invariant 2: `end > start`, at most a year of nights.
    /// A stay: `[check_in, check_out)`.
    pub fn new(start: NaiveDate, end: NaiveDate) -> Result<Self, CalendarError> {
        Self::named(start, end, ("check_in", "check_out"))
    }

    /// A block: `[start, end)`.
    pub fn block(start: NaiveDate, end: NaiveDate) -> Result<Self, CalendarError> {
        Self::named(start, end, ("start", "end"))
    }

    fn named(
        start: NaiveDate, end: NaiveDate, (first, last): (&'static str, &'static str),
    ) -> Result<Self, CalendarError> {
        date(first, start)?;
        date(last, end)?;
        if end <= start {
            return Err(CalendarError::invalid(
                last,
                format!("must be after {first} (the range is [{first}, {last}))"),
            ));
        }
        if (end - start).num_days() > MAX_NIGHTS {
            return Err(CalendarError::invalid(
                last,
                format!("a range is at most {MAX_NIGHTS} nights"),
            ));
        }
        Ok(Self { start, end })
    }

    pub fn count(&self) -> i64 {
        (self.end - self.start).num_days()
    }

    pub fn overlaps(&self, other: &Nights) -> bool {
        self.start < other.end && other.start < self.end
    }
}

// The request bodies take a guest and a price as they are (`GuestDto` and
// `PriceDto` in the schema): unknown fields are refused, the schema carries
// the limits `validate` checks, and a body of the wrong type is refused
// under the schema's name (`expected struct GuestDto`), as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct GuestDto")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = GuestDto))]
pub struct Guest {
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::line::<1, 200>))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_line::<3, 254>))]
    pub email: Option<String>,
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_line::<0, 50>))]
    pub phone: Option<String>,
}

impl Guest {
    pub fn validate(&self) -> Result<(), CalendarError> {
        text("guest.name", &self.name, 1, 200)?;
        if let Some(email) = &self.email {
            text("guest.email", email, 3, 254)?;
            let well_formed = email
                .split_once('@')
                .is_some_and(|(local, host)| !local.is_empty() && !host.is_empty());
            if !well_formed || email.chars().any(char::is_whitespace) {
                return Err(CalendarError::invalid(
                    "guest.email",
                    "is not an e-mail address",
                ));
            }
        }
        optional_text("guest.phone", self.phone.as_deref(), 50)
    }
}

/// Money in integer minor units (cents) and an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "struct PriceDto")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = PriceDto))]
pub struct Price {
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub amount_minor: i64,
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 3, max_length = 3, pattern = "^[A-Z]{3}$")
    )]
    pub currency: String,
}

impl Price {
    pub fn validate(&self) -> Result<(), CalendarError> {
        if self.amount_minor < 0 {
            return Err(CalendarError::invalid(
                "price.amount_minor",
                "must not be negative",
            ));
        }
        let iso = self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase());
        if !iso {
            return Err(CalendarError::invalid(
                "price.currency",
                "must be an ISO 4217 code such as EUR",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookingStatus {
    Tentative,
    Confirmed,
    Cancelled,
    CheckedIn,
    CheckedOut,
    NoShow,
}

impl BookingStatus {
    /// Every status, in the order of the life cycle (the order error
    /// messages list them in).
    pub const ALL: [Self; 6] = [
        Self::Tentative,
        Self::Confirmed,
        Self::CheckedIn,
        Self::CheckedOut,
        Self::Cancelled,
        Self::NoShow,
    ];

    /// Active bookings hold their nights (invariant 1).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Tentative | Self::Confirmed | Self::CheckedIn)
    }

    /// The booking life cycle (invariant 3): whether a booking may move from
    /// this status to `to`. A new booking starts tentative or confirmed; a
    /// lapsed hold's expiry is decided with the clock, apart from this.
    pub fn may_become(self, to: Self) -> bool {
        let from: &[Self] = match to {
            Self::Tentative => &[],
            Self::Confirmed => &[Self::Tentative],
            Self::Cancelled => &[Self::Tentative, Self::Confirmed],
            Self::CheckedIn => &[Self::Confirmed],
            Self::CheckedOut => &[Self::CheckedIn],
            Self::NoShow => &[Self::Confirmed],
        };
        from.contains(&self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tentative => "tentative",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::CheckedIn => "checked_in",
            Self::CheckedOut => "checked_out",
            Self::NoShow => "no_show",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ChannelDto))]
pub enum Channel {
    #[default]
    Direct,
    Airbnb,
    BookingCom,
    Vrbo,
    Ical,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = BlockReasonDto))]
pub enum BlockReason {
    OwnerStay,
    Maintenance,
    Other,
}

/// What kind of claim holds a night: the one kind type of the ledger, in
/// the aggregate, the read models (`kind` columns of `inventory_ranges`,
/// `resource_refs` and the iCal export, all `text` with these names: the
/// `sqlx` feature maps it), conflicts and channel ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(
    feature = "sqlx",
    derive(sqlx::Type),
    sqlx(type_name = "text", rename_all = "snake_case")
)]
pub enum ClaimKind {
    Booking,
    Block,
}

impl ClaimKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Booking => "booking",
            ClaimKind::Block => "block",
        }
    }
}

/// The first calendar date the ledger holds.
pub const FIRST_DATE: NaiveDate = NaiveDate::from_ymd_opt(1900, 1, 1).expect("a valid date");
/// The last calendar date the ledger holds.
pub const LAST_DATE: NaiveDate = NaiveDate::from_ymd_opt(2199, 12, 31).expect("a valid date");

/// Checks that a calendar date is within [`FIRST_DATE`]..=[`LAST_DATE`].
pub fn date(field: &'static str, value: NaiveDate) -> Result<NaiveDate, CalendarError> {
    if (FIRST_DATE..=LAST_DATE).contains(&value) {
        Ok(value)
    } else {
        Err(CalendarError::invalid(
            field,
            format!("must be a date from {FIRST_DATE} to {LAST_DATE}"),
        ))
    }
}

/// Checks that a timestamp falls within the years dates may take.
pub fn timestamp(
    field: &'static str, value: DateTime<Utc>,
) -> Result<DateTime<Utc>, CalendarError> {
    let years = FIRST_DATE.year()..=LAST_DATE.year();
    if years.contains(&value.year()) {
        Ok(value)
    } else {
        Err(CalendarError::invalid(
            field,
            format!(
                "must be a time in the years {} to {}",
                FIRST_DATE.year(),
                LAST_DATE.year()
            ),
        ))
    }
}

/// Which control characters a text field may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// None at all: names, codes, references.
    One,
    /// Tab and newline, for the free text of `notes` and `note`.
    Many,
}

impl Lines {
    fn allows(self, c: char) -> bool {
        !c.is_control() || (self == Lines::Many && matches!(c, '\t' | '\n'))
    }
}

/// Checks a text against the characters its field may hold and its length
/// in characters (`min` counts what is left after trimming whitespace).
pub fn checked_text(
    field: &'static str, value: &str, lines: Lines, (min, max): (usize, usize),
) -> Result<(), CalendarError> {
    if let Some(c) = value.chars().find(|c| !lines.allows(*c)) {
        let allowed = match lines {
            Lines::One => "",
            Lines::Many => " other than tab and newline",
        };
        return Err(CalendarError::invalid(
            field,
            format!(
                "must not contain control characters{allowed} (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    if value.trim().chars().count() < min {
        return Err(CalendarError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(CalendarError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Checks a required one-line text field.
pub fn text(field: &'static str, value: &str, min: usize, max: usize) -> Result<(), CalendarError> {
    checked_text(field, value, Lines::One, (min, max))
}

/// Checks an optional one-line text field: absent is fine, present must fit.
pub fn optional_text(
    field: &'static str, value: Option<&str>, max: usize,
) -> Result<(), CalendarError> {
    value.map_or(Ok(()), |v| checked_text(field, v, Lines::One, (0, max)))
}

/// Checks an optional free-text field that may run over several lines
/// (`notes`, `note`).
pub fn optional_note(
    field: &'static str, value: Option<&str>, max: usize,
) -> Result<(), CalendarError> {
    value.map_or(Ok(()), |v| checked_text(field, v, Lines::Many, (0, max)))
}

/// The OpenAPI schemas of text fields, for the request bodies (the `openapi`
/// feature): they carry the limits checked here, so generated clients and
/// schema-driven fuzzers see them.
#[cfg(feature = "openapi")]
pub mod schema {
    use utoipa::openapi::schema::SchemaType;
    use utoipa::openapi::{Object, ObjectBuilder, Type};

    /// A one-line text field (`#[schema(schema_with = line::<1, 200>)]`):
    /// `MIN` to `MAX` characters (0: no lower bound), no control characters
    /// ([`super::Lines::One`]).
    pub fn line<const MIN: usize, const MAX: usize>() -> Object {
        one_line(MIN, MAX).schema_type(Type::String).build()
    }

    /// [`line`] for a field that may be left out or null.
    pub fn optional_line<const MIN: usize, const MAX: usize>() -> Object {
        one_line(MIN, MAX)
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .build()
    }

    /// A free-text field that may be left out or null (`notes`, `note`):
    /// at most `MAX` characters, tab and newline the only control
    /// characters ([`super::Lines::Many`]). It carries its description:
    /// a `schema_with` schema drops the field's doc comment.
    pub fn optional_notes<const MAX: usize>() -> Object {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .description(Some(
                "Free text; tab and newline are the only control characters allowed.",
            ))
            .max_length(Some(MAX))
            .pattern(Some(r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"))
            .build()
    }

    fn one_line(min: usize, max: usize) -> ObjectBuilder {
        ObjectBuilder::new()
            .min_length((min > 0).then_some(min))
            .max_length(Some(max))
            .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]*$"))
    }
}

/// Checks that a time zone is a known IANA name such as `Europe/Lisbon`.
pub fn timezone(value: &str) -> Result<(), CalendarError> {
    text("timezone", value, 1, 64)?;
    value
        .parse::<chrono_tz::Tz>()
        .map(|_| ())
        .map_err(|_| CalendarError::invalid("timezone", "is not an IANA time zone name"))
}
