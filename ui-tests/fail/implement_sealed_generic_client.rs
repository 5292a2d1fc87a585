// Only pgtx's handles run statements: a type of the user's cannot pose
// as one (it could skip the transaction-control checks).
struct MyClient;

impl pgtx::GenericClient for MyClient {}

fn main() {}
