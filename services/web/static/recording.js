// The recording page (services/web/recording_page.py): waveform, player, notes, tags,
// hold and delete. No inline script (CSP); user data only ever goes in as textContent.
"use strict";
(function () {
  const {$, el, api} = window.callrec;
  const body = document.body;
  const ID = body.dataset.recordingId;
  const API = "/api/recordings/" + encodeURIComponent(ID);
  const MAY_ANNOTATE = body.dataset.mayAnnotate === "true";
  const player = document.getElementById("player");
  const tracks = Array.from(document.querySelectorAll(".lane-track"));
  let wave = null;  // {bucketMs, durationMs, lanes: [Int8Array (min, max pairs), ...]}

  function say(id, text, bad) {
    const node = $(id);
    if (!node) return;
    node.textContent = text;
    node.classList.toggle("error", !!bad);
  }

  // ---- readable local times

  function pad(n) { return String(n).padStart(2, "0"); }
  function local(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.toLocaleDateString(undefined, {weekday: "short", year: "numeric", month: "short",
                                            day: "numeric"}) +
           " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  for (const node of document.querySelectorAll("time.local")) {
    node.title = node.getAttribute("datetime");
    node.textContent = local(node.getAttribute("datetime"));
  }

  // ---- waveform

  function totalSeconds() {
    if (Number.isFinite(player.duration) && player.duration > 0) return player.duration;
    if (wave && wave.durationMs > 0) return wave.durationMs / 1000;
    return Number(body.dataset.durationMs || 0) / 1000;
  }

  function decode(text) {
    const raw = atob(text || "");
    const out = new Int8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = (raw.charCodeAt(i) << 24) >> 24;
    return out;
  }

  function draw() {
    if (!wave) return;
    // One gain for both lanes, so their loudness compares; quiet calls still show.
    let peak = 8;
    for (const lane of wave.lanes) for (let i = 0; i < lane.length; i++) {
      peak = Math.max(peak, Math.abs(lane[i]));
    }
    const totalMs = Math.max(wave.durationMs, wave.bucketMs * (wave.lanes[0].length / 2), 1);
    tracks.forEach((track, index) => {
      const canvas = track.querySelector("canvas");
      const lane = wave.lanes[index] || new Int8Array(0);
      const ratio = window.devicePixelRatio || 1;
      const width = Math.max(1, Math.floor(track.clientWidth * ratio));
      const height = Math.floor(72 * ratio);
      canvas.width = width;
      canvas.height = height;
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, width, height);
      ctx.fillStyle = index === 0 ? "#0b57d0" : "#176b2c";
      const mid = height / 2;
      const scale = (height / 2 - 1) / peak;
      const buckets = lane.length / 2;
      for (let x = 0; x < width; x++) {
        const first = Math.floor((x / width) * totalMs / wave.bucketMs);
        const last = Math.max(first, Math.ceil(((x + 1) / width) * totalMs / wave.bucketMs) - 1);
        if (first >= buckets) break;
        let lo = 127, hi = -128;
        for (let b = first; b <= Math.min(last, buckets - 1); b++) {
          lo = Math.min(lo, lane[2 * b]);
          hi = Math.max(hi, lane[2 * b + 1]);
        }
        const top = mid - Math.max(hi, 0) * scale;
        const bottom = mid - Math.min(lo, 0) * scale;
        ctx.fillRect(x, top, 1, Math.max(1, bottom - top));
      }
      canvas.dataset.drawn = "true";
    });
  }

  async function loadWave() {
    try {
      const data = await api("GET", API + "/waveform");
      wave = {bucketMs: data.peaks.bucket_ms, durationMs: data.duration_ms,
              lanes: data.peaks.channels.map(decode)};
      say("wave-status", data.source === "stored" ? "" :
          "Waveform computed from the audio on this node.");
      draw();
    } catch (e) {
      say("wave-status", "No waveform: " + e.message, true);
    }
  }

  function movePlayhead() {
    const total = totalSeconds();
    const at = total > 0 ? Math.min(player.currentTime / total, 1) : 0;
    for (const track of tracks) {
      track.querySelector(".playhead").style.left = (at * 100) + "%";
    }
  }

  function animate() {
    movePlayhead();
    if (!player.paused && !player.ended) window.requestAnimationFrame(animate);
  }

  function seek(seconds) {
    const total = totalSeconds();
    player.currentTime = Math.max(0, Math.min(seconds, total > 0 ? total : seconds));
    movePlayhead();
  }

  for (const track of tracks) {
    track.addEventListener("click", (event) => {
      const box = track.getBoundingClientRect();
      seek(((event.clientX - box.left) / box.width) * totalSeconds());
    });
  }
  player.addEventListener("timeupdate", movePlayhead);
  player.addEventListener("seeked", movePlayhead);
  player.addEventListener("play", () => window.requestAnimationFrame(animate));
  player.addEventListener("loadedmetadata", () => { draw(); movePlayhead(); });
  for (const button of document.querySelectorAll("button.seek")) {
    button.addEventListener("click", () => {
      seek(Number(button.dataset.seekMs) / 1000);
      player.play().catch(() => {});
    });
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(draw, 100);
  });

  // ---- notes and tags

  function renderAnnotations(data) {
    const tags = $("tags");
    tags.replaceChildren();
    for (const tag of data.tags) {
      const remove = MAY_ANNOTATE ? el("button", {
        type: "button", class: "link", title: "remove this tag", "aria-label": "remove " + tag,
        "data-testid": "tag-remove", onclick: () => changeTag(tag, false),
      }, "×") : null;
      tags.append(el("li", {"data-testid": "tag", "data-tag": tag}, el("span", {text: tag}), remove));
    }
    if (!data.tags.length) tags.append(el("li", {class: "muted", text: "no tags"}));
    const notes = $("notes");
    notes.replaceChildren();
    for (const note of data.notes) {
      notes.append(el("li", {"data-testid": "note"},
        el("div", {class: "note-head muted"}, el("strong", {text: note.author}), " · ",
           el("time", {datetime: note.at, text: local(note.at)})),
        el("div", {class: "note-text", text: note.text})));
    }
    if (!data.notes.length) notes.append(el("li", {class: "muted", text: "no notes"}));
  }

  async function loadAnnotations() {
    try {
      renderAnnotations(await api("GET", API + "/annotations"));
      $("tag-form").hidden = !MAY_ANNOTATE;
      $("note-form").hidden = !MAY_ANNOTATE;
      say("annotations-status", "");
    } catch (e) {
      say("annotations-status", "Notes and tags are unavailable: " + e.message, true);
    }
  }

  async function changeTag(tag, added) {
    try {
      await api(added ? "PUT" : "DELETE", API + "/tags/" + encodeURIComponent(tag));
      await loadAnnotations();
    } catch (e) {
      say("annotations-status", "Tag not changed: " + e.message, true);
    }
  }

  $("tag-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("tag-input");
    const tag = input.value.trim();
    if (!tag) return;
    await changeTag(tag, true);
    input.value = "";
  });

  $("note-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("note-text");
    if (!text.value.trim()) return;
    try {
      await api("POST", API + "/notes", {text: text.value});
      text.value = "";
      await loadAnnotations();
    } catch (e) {
      say("annotations-status", "Note not added: " + e.message, true);
    }
  });

  // ---- administration

  const hold = $("hold-toggle");
  if (hold) {
    hold.addEventListener("click", async () => {
      const held = body.dataset.held === "true";
      try {
        await api(held ? "DELETE" : "PUT", API + "/hold");
        window.location.reload();
      } catch (e) {
        say("page-message", "Legal hold not changed: " + e.message, true);
      }
    });
  }
  const remove = $("delete");
  if (remove) {
    remove.addEventListener("click", async () => {
      if (!window.confirm("Delete this recording on every node? This cannot be undone.")) return;
      try {
        await api("DELETE", API);
        window.location.assign("/");
      } catch (e) {
        say("page-message", "Not deleted: " + e.message, true);
      }
    });
  }

  loadWave();
  loadAnnotations();
})();
