use clap::Parser;
use ftri::error::is_user_error;

fn main() {
    let cli = ftri::cli::Cli::parse();
    if let Err(e) = ftri::cli::run(cli) {
        // One line for the user; the full chain only for bugs.
        if is_user_error(&e) {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
