import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Emitter } from '../../src/index.js';

class Source extends Emitter<{ tick: number; done: { why: string } }> {
  fire(n: number): void {
    this.emit('tick', n);
  }
  finish(why: string): void {
    this.emit('done', { why });
  }
}

test('on / off / once: listeners run in the order added, and only while added', () => {
  const s = new Source();
  const seen: string[] = [];
  const offA = s.on('tick', (n) => seen.push(`a${n}`));
  s.once('tick', (n) => seen.push(`once${n}`));
  s.on('done', (e) => seen.push(`done:${e.why}`));
  s.fire(1);
  s.fire(2);
  offA();
  s.fire(3);
  s.finish('ok');
  s.removeAllListeners();
  s.finish('again');
  assert.deepEqual(seen, ['a1', 'once1', 'a2', 'done:ok']);
});

test('a listener removing another during an emit does not skip or break the round', () => {
  const s = new Source();
  const seen: string[] = [];
  let offB: () => void = () => {};
  s.on('tick', () => {
    seen.push('a');
    offB();
  });
  offB = s.on('tick', () => seen.push('b'));
  s.fire(1); // b was still registered when the round began
  s.fire(2);
  assert.deepEqual(seen, ['a', 'b', 'a']);
});
