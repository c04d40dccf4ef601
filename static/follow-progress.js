// A page with a run under way (an import, a send of mails) follows it in place instead of
// reloading itself on a timer (a page that reloads itself on a timer moves a reader's place under
// them: WCAG 2.2.1). The page marks what to follow:
//
//   <div id="..." data-follow-ms="1000" data-running="yes">   the block: how often to look again
//     ... <x id="..." data-follow-part> ... </x> ...         each part shown anew (an id each)
//   </div>
//
// Every data-follow-ms the script fetches the page again and puts each part's new content where
// the old was, only when it changed (a part in a status region, the run's state, is then read
// out). Once the run is over (the fresh block's data-running is no longer "yes"), or the answer
// is another page (the session ended) or one without a part, the page is loaded again whole.
// Without scripts the page says to reload it. One followed block a page.
(() => {
  "use strict";
  const block = document.querySelector("[data-follow-ms]");
  if (!block || !block.id || block.getAttribute("data-running") !== "yes") {
    return;
  }
  const everyMs = Math.max(Number(block.getAttribute("data-follow-ms")) || 1000, 500);
  const parts = [...block.querySelectorAll("[data-follow-part]")].map((part) => part.id);

  // Each part's fresh content put in place; false when the fresh page lacks one (shown whole).
  const show = (fresh) => {
    const freshParts = parts.map((id) => fresh.getElementById(id));
    if (freshParts.some((part) => !part)) {
      return false;
    }
    parts.forEach((id, i) => {
      const part = document.getElementById(id);
      if (part.innerHTML !== freshParts[i].innerHTML) { // nothing swapped for nothing
        part.replaceChildren(...freshParts[i].childNodes);
      }
    });
    return true;
  };

  // The page as the server shows it now; null when there was none to be had (the network or
  // the server, for a moment: it is asked again), undefined for an answer that is an error.
  const fetchPage = async () => {
    try {
      const response = await fetch(window.location.href, { cache: "no-store" });
      if (response.status >= 500) {
        return null;
      }
      if (!response.ok) {
        return undefined;
      }
      return new DOMParser().parseFromString(await response.text(), "text/html");
    } catch (error) {
      return null; // an answer cut off mid-body too: asked again
    }
  };

  const follow = async () => {
    const fresh = await fetchPage();
    if (fresh !== null) {
      const freshBlock = fresh && fresh.getElementById(block.id);
      if (!freshBlock || freshBlock.getAttribute("data-running") !== "yes" || !show(fresh)) {
        window.location.reload(); // over, or another page (the session ended): shown whole
        return;
      }
    }
    window.setTimeout(follow, everyMs);
  };

  window.setTimeout(follow, everyMs);
})();
