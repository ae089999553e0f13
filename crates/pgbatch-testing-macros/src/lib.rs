//! The `#[pgbatch_testing::test]` attribute; use it through `pgbatch-testing`, which
//! re-exports it and documents it.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{FnArg, Ident, ItemFn, LitStr, Pat, Token, Type, parse_macro_input};

/// What the attribute's arguments ask for.
#[derive(Default)]
struct Setup {
    migrations: Option<LitStr>,
    fixtures: Vec<LitStr>,
}

impl Parse for Setup {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut setup = Setup::default();
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            match key.to_string().as_str() {
                "migrations" => {
                    input.parse::<Token![=]>()?;
                    setup.migrations = Some(input.parse()?);
                }
                "fixtures" => {
                    let content;
                    syn::parenthesized!(content in input);
                    setup.fixtures = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?.into_iter().collect();
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown argument `{other}`: expected `migrations = \"dir\"` or `fixtures(\"name\", ...)`"
                        ),
                    ));
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(setup)
    }
}

/// What the test takes as its argument, from its type's last path segment.
enum Argument {
    None,
    Pool(Pat, Box<Type>),
    Connection(Pat, Box<Type>),
    Database(Pat, Box<Type>),
}

fn argument(function: &ItemFn) -> syn::Result<Argument> {
    let inputs: Vec<&FnArg> = function.sig.inputs.iter().collect();
    let typed = match inputs.as_slice() {
        [] => return Ok(Argument::None),
        [FnArg::Typed(typed)] => typed,
        _ => {
            return Err(syn::Error::new_spanned(
                &function.sig.inputs,
                "a #[pgbatch_testing::test] takes at most one argument: a `pgbatch::Pool`, a `pgbatch::Connection` \
                 or a `&pgbatch_testing::TestDatabase`",
            ));
        }
    };
    let last = |ty: &Type| match ty {
        Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
        Type::Reference(reference) => match &*reference.elem {
            Type::Path(path) => path.path.segments.last().map(|s| format!("&{}", s.ident)),
            _ => None,
        },
        _ => None,
    };
    let (pat, ty) = ((*typed.pat).clone(), typed.ty.clone());
    match last(&typed.ty).as_deref() {
        Some("Pool") => Ok(Argument::Pool(pat, ty)),
        Some("Connection") => Ok(Argument::Connection(pat, ty)),
        Some("&TestDatabase") => Ok(Argument::Database(pat, ty)),
        _ => Err(syn::Error::new_spanned(
            &typed.ty,
            "the argument's type must be `pgbatch::Pool`, `pgbatch::Connection` or `&pgbatch_testing::TestDatabase`",
        )),
    }
}

/// A `#[tokio::test]` with a PostgreSQL database of its own, found as `pgbatch-testing`
/// finds one.
///
/// ```ignore
/// #[pgbatch_testing::test(migrations = "migrations", fixtures("tenants"))]
/// async fn a_project_is_created(pool: pgbatch::Pool) {
///     // The database has the crate's Diesel migrations (run once per process, into a
///     // template each test copies) and `tests/fixtures/tenants.sql` applied.
/// }
/// ```
///
/// - `migrations = "dir"`: a Diesel migrations directory, relative to the crate's root.
/// - `fixtures("name", ...)`: SQL files `tests/fixtures/<name>.sql`, run in order after the
///   migrations, each as one transaction.
/// - The argument, if any: a `pgbatch::Pool` (3 connections), a `pgbatch::Connection`, or a
///   `&pgbatch_testing::TestDatabase`.
///
/// The database is dropped after the test. When the test fails and `PGBATCH_KEEP_FAILED`
/// is set, it is kept, and the test prints how to connect to it; a container or private
/// cluster the test process started as its server is kept with it, and the test prints the
/// command that removes it. The tests of one process
/// share a budget of connections (`PGBATCH_TEST_CONNECTIONS`, 40 by default; each test
/// takes 4), so that `cargo test`'s threads cannot exhaust the server's `max_connections`.
/// A missing migrations folder, a failing migration or fixture, and a server that cannot be
/// reached fail the test with a message that names the folder, the file or the server, and
/// the cause.
#[proc_macro_attribute]
pub fn test(attribute: TokenStream, item: TokenStream) -> TokenStream {
    let setup = parse_macro_input!(attribute as Setup);
    let mut function = parse_macro_input!(item as ItemFn);
    if function.sig.asyncness.is_none() {
        return syn::Error::new_spanned(function.sig.fn_token, "a #[pgbatch_testing::test] must be an `async fn`")
            .to_compile_error()
            .into();
    }
    let argument = match argument(&function) {
        Ok(argument) => argument,
        Err(error) => return error.to_compile_error().into(),
    };
    function.sig.inputs.clear();
    let migrations = match &setup.migrations {
        Some(dir) => quote!(::core::option::Option::Some(concat!(env!("CARGO_MANIFEST_DIR"), "/", #dir))),
        None => quote!(::core::option::Option::None),
    };
    let fixtures = setup
        .fixtures
        .iter()
        .map(|name| quote!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", #name, ".sql")));
    let harness = Ident::new("__pgbatch_test_harness", Span::mixed_site());
    let bind = match argument {
        Argument::None => quote!(),
        Argument::Pool(pat, ty) => quote!(let #pat: #ty = #harness.pool().await;),
        Argument::Connection(pat, ty) => quote!(let #pat: #ty = #harness.connection().await;),
        Argument::Database(pat, ty) => quote!(let #pat: #ty = #harness.database();),
    };
    let attributes = &function.attrs;
    let visibility = &function.vis;
    let signature = &function.sig;
    let body = &function.block;
    let name = &signature.ident;
    quote! {
        #(#attributes)*
        #[::tokio::test]
        #visibility #signature {
            let #harness = ::pgbatch_testing::TestHarness::start(::pgbatch_testing::TestSetup {
                test: concat!(module_path!(), "::", stringify!(#name)),
                migrations: #migrations,
                fixtures: &[#(#fixtures),*],
            })
            .await;
            #bind
            #body
        }
    }
    .into()
}
