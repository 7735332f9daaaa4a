//! Prints `vdisk_ovf::inspect` of a package as JSON: `cargo run --example ovf_inspect -- PKG`.

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: ovf_inspect PACKAGE");
        std::process::exit(2);
    };
    match vdisk_ovf::inspect(std::path::Path::new(&path)) {
        Ok(r) => match serde_json::to_string_pretty(&r) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            std::process::exit(1);
        }
    }
}
