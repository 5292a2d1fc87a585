// The `Open` state marker cannot be built outside the crate.

fn main() {
    let open = pgtx::Open(());
    println!("{open:?}");
}
