//! The `rlvr` command line.

fn main() {
    println!("rlvr");
}
