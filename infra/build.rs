//! `sqlx::migrate!` (infra/src/db.rs) embeds the migrations at compile
//! time; without this a new migration file is not seen until something else
//! in the crate changes (what `sqlx migrate build-script` writes).

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
