// Validates Istio custom resources against Istio's published CRD schemas, as packaged by
// @kubernetes-models/istio (generated from Istio 1.29's crd-all.gen.yaml). Used by
// e2e/tests/test_deploy.py, which installs this directory's package-lock.json with `npm ci`
// and runs this file from the install directory.
//
//   node check.mjs < docs.json      (a JSON array of resources)  ->  a JSON array of results
//
// Two checks per resource:
//  1. schema: the CRD's OpenAPI schema (types, enums, required fields, oneOf), through the
//     package's compiled validators.
//  2. fields: unknown field names. CRD schemas do not forbid them (the API server prunes
//     them silently: a misspelt `workloadSelector` would make an EnvoyFilter apply to every
//     workload of the namespace), so every object of the resource is type-checked on its own
//     against the TypeScript type the package generates from the same schema. Free-form
//     parts (an EnvoyFilter's patch value) are typed as open maps and accept anything.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import ts from "typescript";

const docs = JSON.parse(readFileSync(0, "utf8"));

function modulePath(doc) {
  const [group, version] = doc.apiVersion.split("/");
  return `@kubernetes-models/istio/${group}/${version}/${doc.kind}`;
}

async function schemaCheck(doc) {
  const mod = await import(modulePath(doc));
  try {
    new mod[doc.kind](doc).validate();
    return null;
  } catch (error) {
    return String(error?.message ?? error);
  }
}

// One typed declaration per object node: `const n: TypeAtPath = {...}` makes TypeScript's
// excess-property check apply at that node, whatever its parents' types look like. A node's
// object-valued children are checked by their own declarations (here they are `any`), so each
// error is reported once, at the object that holds the unknown or mistyped field.
const HELPERS = `
type At<T, K extends PropertyKey> = K extends keyof NonNullable<T> ? NonNullable<T>[K] : any;
type Item<T> = NonNullable<T> extends readonly (infer U)[] ? U : any;
`;

const isObject = (v) => v !== null && typeof v === "object";
const holdsObjects = (v) => isObject(v) && (!Array.isArray(v) || v.some(isObject));

function literal(node) {
  const parts = Object.entries(node).map(([key, value]) =>
    `${JSON.stringify(key)}: ${holdsObjects(value) ? "(undefined as any)" : JSON.stringify(value)}`);
  return `{${parts.join(", ")}}`;
}

function declarations(doc, index) {
  const out = [`import type { I${doc.kind} as T${index} } from "${modulePath(doc)}";`, HELPERS];
  let counter = 0;
  const walk = (value, typeExpr, where) => {
    if (Array.isArray(value)) {
      value.forEach((item, i) => walk(item, `Item<${typeExpr}>`, `${where}[${i}]`));
      return;
    }
    if (!isObject(value)) return;
    out.push(`// ${where}`);
    out.push(`export const d${index}_${counter++}: NonNullable<${typeExpr}> = ${literal(value)};`);
    for (const [key, child] of Object.entries(value)) {
      walk(child, `At<${typeExpr}, ${JSON.stringify(key)}>`, `${where}.${key}`);
    }
  };
  walk(doc, `T${index}`, `${doc.kind}/${doc.metadata?.name ?? "?"}`);
  return out.join("\n");
}

function fieldCheck(docsToCheck) {
  const dir = mkdtempSync(join(process.cwd(), ".check-"));
  try {
    const files = docsToCheck.map((doc, i) => {
      const file = join(dir, `doc${i}.ts`);
      writeFileSync(file, declarations(doc, i) + "\n");
      return file;
    });
    const program = ts.createProgram(files, {
      noEmit: true,
      strict: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
      skipLibCheck: true,
    });
    return files.map((file) => {
      const source = program.getSourceFile(file);
      const diagnostics = ts.getPreEmitDiagnostics(program, source);
      if (diagnostics.length === 0) return null;
      return diagnostics
        .map((d) => {
          const message = ts.flattenDiagnosticMessageText(d.messageText, "\n").slice(0, 400);
          if (!d.file || d.start === undefined) return message;
          const { line } = d.file.getLineAndCharacterOfPosition(d.start);
          const lines = d.file.text.split("\n");
          // The comment above the declaration names the object's path in the resource.
          let where = "";
          for (let l = line; l >= 0; l--) {
            if (lines[l].startsWith("// ")) { where = lines[l].slice(3); break; }
          }
          return `${where}: ${message}`;
        })
        .join("\n");
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const results = [];
for (const doc of docs) {
  results.push({ kind: doc.kind, name: doc.metadata?.name ?? null, schema: await schemaCheck(doc) });
}
// The IstioOperator CRD declares its spec free-form (istioctl validates it, not the API
// server), and the package's type has no `spec` at all: only its schema is checked here.
const FREE_FORM_KINDS = new Set(["IstioOperator"]);
const typed = docs.filter((doc) => !FREE_FORM_KINDS.has(doc.kind));
const fields = fieldCheck(typed);
results.forEach((result, i) => {
  const at = typed.indexOf(docs[i]);
  result.fields = at === -1 ? "not checked: free-form spec" : fields[at];
});
process.stdout.write(JSON.stringify(results));
