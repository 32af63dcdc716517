// The page a mailed link opens: /login/magic#token=...[&confirm=1]. The token is in the fragment, which the
// browser never sends to a server (no access log or Referer holds it); this page posts it to the API once.
// A registration's link (confirm=1) is redeemed with the account's password.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token");
const confirming = params.get("confirm") === "1";
history.replaceState(null, "", location.pathname); // the token leaves the address bar and the history

async function redeem(password) {
  const body = password ? { token, password } : { token };
  const res = await fetch("/api/v1/auth/magic-link/verify", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    $("magic-error").textContent = data?.error?.message || `${res.status} ${res.statusText}`;
    return false;
  }
  sessionStorage.setItem("veza.session", JSON.stringify(data)); // what the main page reads
  location.replace("/");
  return true;
}

if (!token) {
  $("magic-status").textContent = "This link is incomplete: open the one from your email again.";
} else if (confirming) {
  $("magic-status").hidden = true;
  $("confirm-form").hidden = false;
  $("confirm-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    await redeem(new FormData(e.target).get("password"));
  });
} else {
  redeem(null).then((ok) => { if (!ok) $("magic-status").textContent = "This link did not log you in."; });
}
