// Drives the web console's management pages (O8) in headless Chromium with playwright-core.
// Run by tests/tests/console_browser.rs, which starts a primary server (console on) with a
// secondary, a gateway with two agents behind it, two direct agents and an update revision,
// and passes (besides CONSOLE_URL, LOGIN, SPKI, SHOTS, CHROMIUM — see console.mjs):
//   MOVER      an agent to move to a new group and push a message to
//   LEAVER     an agent to remove from the deployment
//   GATEWAY    the gateway's device id      REVISION  the update revision it has cached
//   NEIGHBOUR  the secondary's name         KEY       a key to lease seats of
//   ACCOUNT / PASSWORD  a console account to sign in with (LOGIN is not used here)
// The test then checks on the agents and servers that what was done here happened.
import { env, expect, shot, submit, url, withBrowser } from './lib.mjs';

const mover = env('MOVER');
const leaver = env('LEAVER');
const neighbour = env('NEIGHBOUR');
const key = env('KEY');
const until = new Date(Date.now() + 30 * 86400e3).toISOString().slice(0, 10);
const outcome = async (page) => (await page.textContent('#outcome')).trim();

await withBrowser(async (page) => {
  // Sign in with the account: a wrong password is refused, the right one opens the overview.
  let r = await page.goto(`${url}/`);
  expect(r.status() === 401 && await page.locator('#sign-in').count() === 1, 'not signed in: the sign-in form');
  await page.fill('#sign-in input[name=name]', env('ACCOUNT'));
  await page.fill('#sign-in input[name=password]', 'not the password');
  r = (await Promise.all([page.waitForNavigation(), page.click('#sign-in button')]))[0];
  expect(r.status() === 401 && (await page.textContent('#refused')).includes('Wrong name or password'), 'a wrong password is refused');
  await page.fill('#sign-in input[name=name]', env('ACCOUNT'));
  await page.fill('#sign-in input[name=password]', env('PASSWORD'));
  await submit(page, '#sign-in');
  expect(new URL(page.url()).pathname === '/' && (await page.textContent('header')).includes(env('ACCOUNT')),
    'the right password signs in');

  // Groups: a bad path is refused with the reason; a good one is created.
  await page.goto(`${url}/groups`);
  await page.fill('#create-group input[name=path]', 'everyone/nowhere/x');
  await submit(page, '#create-group');
  expect((await outcome(page)).startsWith('refused'), `a group under a missing parent is refused (${await outcome(page)})`);
  await page.fill('#create-group input[name=path]', 'everyone/berlin');
  await submit(page, '#create-group');
  expect((await outcome(page)).startsWith('done'), 'group everyone/berlin created');
  expect((await page.textContent('#groups')).includes('everyone/berlin'), 'the new group is listed');

  // Push to a group (everyone): one copy up to the gateway, which fans it out.
  await page.selectOption('#push-group select[name=group]', 'everyone');
  await page.selectOption('#push-group select[name=kind]', 'message');
  await page.fill('#push-group input[name=message]', 'to everyone from the console');
  await submit(page, '#push-group');
  const pushed = await outcome(page);
  expect(pushed.startsWith('done: push') && pushed.includes('via 1 gateway'), `the group push went out through the gateway (${pushed})`);
  await shot(page, 'groups');

  // Move a device into the new group, then push a message to it alone.
  await page.goto(`${url}/devices/${mover}`);
  await page.selectOption('#move select[name=group]', 'everyone/berlin');
  await submit(page, '#move');
  expect((await outcome(page)).startsWith('done'), 'the device is moved');
  expect((await page.textContent('main table')).includes('everyone/berlin'), 'its page shows the new group');
  await page.selectOption('#push select[name=kind]', 'message');
  await page.fill('#push input[name=message]', 'to the mover from the console');
  await submit(page, '#push');
  // Acknowledged within the page's 3 s wait (or, on a starved machine, sent and not yet
  // acknowledged); the test then checks the message arrived.
  expect(/: 1 acknowledged, 0 sent|: 0 acknowledged, 1 sent/.test(await outcome(page)), `the push reached the online agent (${await outcome(page)})`);
  expect(await page.locator('#events').count() === 1, 'the device page lists its recent events');
  await shot(page, 'device-moved');

  // Servers and leases: the secondary's link; a give beyond the free seats is refused, then
  // a lease is given, enlarged and revoked.
  await page.goto(`${url}/servers`);
  const servers = await page.textContent('#servers');
  expect(servers.includes(neighbour) && servers.includes('connected'), `${neighbour} is listed, connected`);
  const give = async (seats) => {
    await page.selectOption('#give-lease select[name=server]', neighbour);
    await page.selectOption('#give-lease select[name=key]', key);
    await page.fill('#give-lease input[name=seats]', String(seats));
    await page.fill('#give-lease input[name=until]', until);
    await submit(page, '#give-lease');
  };
  await give(500);
  expect((await outcome(page)).startsWith('refused'), `500 seats are refused (${await outcome(page)})`);
  await give(3);
  const lease = (await outcome(page)).match(/lease (lease-[0-9a-f]+)/)?.[1];
  expect((await outcome(page)).startsWith('done') && lease, `a lease of 3 seats is given (${lease})`);
  let row = page.locator('#leases tr', { hasText: lease });
  expect((await row.textContent()).includes('given'), 'the lease is listed as given');
  await row.locator('input[name=seats]').fill('5');
  await submit(page, `#leases form[action="/leases/${lease}"]`);
  expect((await outcome(page)).startsWith('done'), `the lease is changed to 5 seats (${await outcome(page)})`);
  await shot(page, 'servers');
  // A second lease, revoked at once: the office stops using its seat now, this server has it
  // back when the period granted ends.
  await give(1);
  const second = (await outcome(page)).match(/lease (lease-[0-9a-f]+)/)?.[1];
  expect(second && second !== lease, `a second lease is given (${second})`);
  await submit(page, `#leases form[action="/leases/${second}/revoke"]`);
  expect((await outcome(page)).startsWith('done'), 'the second lease is revoked');
  row = page.locator('#leases tr', { hasText: second });
  expect((await row.textContent()).includes('(revoked)'), 'it shows as revoked');

  // Updates and each gateway's cache.
  await page.goto(`${url}/updates`);
  expect((await page.textContent('#revisions')).includes(env('REVISION')), 'the revision is listed');
  const gw = page.locator('#gateways tr', { hasText: env('GATEWAY') });
  const cells = await gw.locator('td').allTextContents();
  expect(cells[1].startsWith('dial-in') && cells[4] === env('REVISION'),
    `the gateway's cache shows revision ${env('REVISION')} over its uplink (${cells.join(' | ')})`);
  await shot(page, 'updates');

  // Discovered hosts and notifications.
  await page.goto(`${url}/hosts?unmanaged=1`);
  expect(await page.locator('#hosts').count() === 1, 'the discovered hosts page shows its table');
  await shot(page, 'hosts');
  await page.goto(`${url}/notifications`);
  expect(await page.locator('#notifications').count() === 1, 'the notifications page shows its table');
  await shot(page, 'notifications');

  // Remove a device: back on the device list, which no longer finds it.
  await page.goto(`${url}/devices/${leaver}`);
  await page.check('#remove input[name=free_seat_now]');
  await submit(page, '#remove');
  expect((await outcome(page)).startsWith('done'), `the device is removed (${await outcome(page)})`);
  await page.goto(`${url}/devices?q=${leaver}`);
  expect((await page.textContent('#count')).startsWith('0 device'), 'the removed device is gone');

  // Every action, done or refused, is in the audit log.
  await page.goto(`${url}/audit`);
  const log = await page.textContent('#audit');
  for (const a of ['group-create', 'push', 'move', 'lease-give', 'lease-change', 'lease-revoke', 'remove']) {
    expect(log.includes(a), `the audit log records ${a}`);
  }
  expect(log.includes('refused: '), 'the audit log records the refusals');
});
console.log('manage browser test passed');
