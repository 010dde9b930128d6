fetch("message.txt").then((r) => r.text()).then((t) => {
  document.getElementById("message").textContent = t;
});
