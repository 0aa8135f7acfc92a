// Load the golden wire fixtures of hermes-proto (crates/hermes-proto/fixtures/*.json).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../crates/hermes-proto/fixtures');

export function fixture(name) {
  return JSON.parse(readFileSync(path.join(dir, `${name}.json`), 'utf8'));
}

export function fixtureText(name) {
  return readFileSync(path.join(dir, `${name}.json`), 'utf8').trim();
}
